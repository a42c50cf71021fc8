"""Placeholder until the OpenAPI document lands."""
from .http import success


def get_openapi(req):
    return success({})


def get_docs(req):
    return success({})
