// What the server told the page: handlers/web.py renders it into data-
// attributes of <body> (the API prefix, whether registration and attachments
// are on). Nothing else about the server is known here.

export const BODY = document.body;
export const API = BODY.dataset.api || "/api";
export const REGISTER = BODY.dataset.register !== "off";
export const ATTACHMENTS = BODY.dataset.attachments === "on";
export const STORE_KEY = `oxc.session:${API}`;
