// Attachments (POST /chats/{id}/attachments, GET /attachments/{id}/thumbnail):
// everything about files is here, and is switched off when the server has no
// attachment routes (data-attachments="off").

import {ATTACHMENTS} from "./config.js";
import {$, clipIcon, el, formatSize} from "./dom.js";
import {api} from "./api.js";
import {blobs, state} from "./state.js";

export function setupAttachments() {
  $("attach-slot").hidden = !ATTACHMENTS;
  if (!ATTACHMENTS) return;
  $("attach-input").addEventListener("change", (event) => {
    const file = event.currentTarget.files[0];
    if (!file) return;
    state.file = file;
    $("attachment-name").replaceChildren(clipIcon(), ` ${file.name} (${formatSize(file.size)})`);
    $("attachment-preview").hidden = false;
    $("composer-input").focus();
  });
  $("attachment-clear").addEventListener("click", () => {
    clearFile();
    $("composer-input").focus();
  });
}

export function clearFile() {
  state.file = null;
  $("attach-input").value = "";
  $("attachment-preview").hidden = true;
}

/** Upload a file into a chat without sending it; answers its id for the message that carries it. */
export async function uploadAttachment(chatId, file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const {data} = await api(`/chats/${encodeURIComponent(chatId)}/attachments`, {method: "POST", body: form});
  return data.id;
}

async function objectUrl(path) {
  if (!blobs.has(path)) {
    const response = await api(path, {raw: true});
    blobs.set(path, URL.createObjectURL(await response.blob()));
  }
  return blobs.get(path);
}

async function openAttachment(attachment) {
  try {
    const url = await objectUrl(`/attachments/${encodeURIComponent(attachment.id)}/content`);
    const link = el("a", {href: url});
    if (attachment.kind === "image") {
      link.target = "_blank";
      link.rel = "noopener";
    } else {
      link.download = attachment.name;
    }
    link.click();
  } catch (error) {
    $("composer-error").textContent = error.message;
  }
}

export function attachmentNode(attachment) {
  const box = el("div", {class: "attachment"});
  const thumbnail = attachment.thumbnail || {};
  if (attachment.kind === "image" && thumbnail.status === "ready") {
    const image = el("img", {alt: attachment.name, width: thumbnail.width, height: thumbnail.height});
    box.append(el("button", {type: "button", "aria-label": `Open the image ${attachment.name}`,
      onclick: () => openAttachment(attachment)}, image));
    objectUrl(`/attachments/${encodeURIComponent(attachment.id)}/thumbnail`)
      .then((url) => { image.src = url; })
      .catch(() => { image.alt = `${attachment.name} (the preview cannot be shown)`; });
  } else {
    box.append(el("button", {type: "button", class: "file", "aria-label": `Download ${attachment.name}`,
      onclick: () => openAttachment(attachment)},
    clipIcon(),
    el("span", {text: `${attachment.name} (${formatSize(attachment.size)})`})));
  }
  return box;
}
