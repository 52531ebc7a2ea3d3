// Live chat: send through /v1, follow /v1/chat/stream (server-sent events), render in place.
// Without this script the page still works through its form. The Home thread (the family's
// voice turns) has no form: it only follows the stream's Home messages. The agent's answers
// come as HTML the server made from their Markdown and cleaned (`html`): that alone is ever set
// as HTML here; a member's words are set as text. Each code block gets a copy button.
// A page showing an older part of the thread (a search result's, with newer messages past it)
// does not follow the stream: the live thread is at /chat.
// A photo goes with the message (the form's file input); a voice note is recorded here with
// MediaRecorder and sent as its own message when the recording stops. Both show in the history:
// a thumbnail or a player, fetched from /v1/chat/media/<id> (only their sender gets them).
(() => {
  const list = document.getElementById("messages");
  const home = list.dataset.thread === "home";
  const following = list.dataset.newer !== "yes";
  const form = document.getElementById("send");
  const status = document.getElementById("status");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const drafts = new Map();

  const clock = (t) => new Date(t * 1000).toTimeString().slice(0, 5);

  function showStatus(text) {
    status.textContent = text || "";
    status.hidden = !text;
  }

  function element(id) {
    let li = document.getElementById("m-" + id);
    if (!li) {
      li = document.createElement("li");
      li.id = "m-" + id;
      li.innerHTML = '<span class="who"></span><span class="when"></span><div class="text"></div>';
      list.appendChild(li);
    }
    return li;
  }

  function addCopyButtons(text) {
    for (const pre of text.querySelectorAll("pre")) {
      if (pre.parentElement.classList.contains("code")) continue;
      const block = document.createElement("div");
      block.className = "code";
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      pre.replaceWith(block);
      block.append(button, pre);
    }
  }

  function setText(text, m) {
    if (m.html != null) {
      text.innerHTML = m.html; // made from Markdown and cleaned by the server (sudo_api/markdown.py)
      text.classList.add("md");
      addCopyButtons(text);
    } else {
      text.textContent = m.text;
    }
  }

  async function copy(button) {
    const code = button.parentElement.querySelector("pre").textContent.replace(/\n$/, "");
    try {
      await navigator.clipboard.writeText(code);
      button.textContent = "Copied";
    } catch {
      // No clipboard here (a page not served over HTTPS): select the code to copy by hand.
      const range = document.createRange();
      range.selectNodeContents(button.parentElement.querySelector("pre"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      button.textContent = "Selected";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  }

  function addMedia(li, m) {
    if (!m.media_url || li.querySelector(".media")) return;
    const media = document.createElement(m.media_type.startsWith("image/") ? "img" : "audio");
    media.className = "media";
    media.src = m.media_url;
    if (media.tagName === "IMG") media.alt = "A photo you sent";
    else { media.controls = true; media.preload = "none"; }
    li.querySelector(".text").before(media);
  }

  function render(m) {
    const draft = m.reply_to && drafts.get(m.reply_to);
    if (m.role === "assistant" && draft) { draft.remove(); drafts.delete(m.reply_to); }
    const li = element(m.id);
    addMedia(li, m);
    li.className = `message ${m.role} ${m.status}` + (li.classList.contains("found") ? " found" : "");
    li.dataset.n = m.n;
    li.querySelector(".who").textContent = m.role === "user" ? m.sender : "Assistant";
    li.querySelector(".when").textContent = clock(m.created_at);
    setText(li.querySelector(".text"), m);
    li.querySelector(".failed")?.remove();
    if (m.status === "failed") {
      const p = document.createElement("p");
      p.className = "failed";
      p.textContent = `Not delivered: ${m.error} `;
      const b = document.createElement("button");
      b.className = "retry";
      b.dataset.id = m.id;
      b.textContent = "Retry";
      p.appendChild(b);
      li.appendChild(p);
    }
    if (m.role === "assistant" || m.status === "answered" || m.status === "failed") showStatus("");
    li.scrollIntoView({ block: "end" });
  }

  function renderDraft(replyTo, draft) {
    let li = drafts.get(replyTo);
    if (!li) {
      li = document.createElement("li");
      li.className = "message assistant draft";
      li.innerHTML = '<span class="who">Assistant</span><div class="text"></div>';
      list.appendChild(li);
      drafts.set(replyTo, li);
    }
    setText(li.querySelector(".text"), draft);
    showStatus("");
    li.scrollIntoView({ block: "end" });
  }

  async function post(url, body) {
    const form = body instanceof FormData; // multipart: the browser writes its Content-Type
    const resp = await fetch(url, {
      method: "POST",
      headers: form ? { "X-CSRF-Token": csrf } : { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: form ? body : JSON.stringify(body || {}),
    });
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    return data;
  }

  async function send(body) {
    try {
      const { message } = await post("/v1/chat/messages", body);
      render(message);
      return true;
    } catch (err) {
      showStatus(`Could not send: ${err.message}`);
      return false;
    }
  }

  form?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = form.text.value.trim();
    const photo = form.file.files[0];
    if (!text && !photo) return;
    const body = new FormData();
    body.append("text", text);
    if (photo) body.append("file", photo);
    if (await send(body)) { form.text.value = ""; form.file.value = ""; showAttached(); }
  });

  // The chosen photo's name shows in its button, the file input itself being unseen.
  const attached = document.getElementById("attached");
  const showAttached = () => { if (attached) attached.textContent = form.file.files[0]?.name ?? ""; };
  form?.file?.addEventListener("change", showAttached);

  // Voice notes: record, then stop to send.
  const record = document.getElementById("record");
  const elapsed = document.getElementById("elapsed");
  let recorder = null;
  if (record && window.MediaRecorder && navigator.mediaDevices?.getUserMedia) {
    record.hidden = false;
    record.addEventListener("click", async () => {
      if (recorder) { recorder.stop(); return; }
      let stream;
      try { stream = await navigator.mediaDevices.getUserMedia({ audio: true }); }
      catch (err) { showStatus(`No microphone: ${err.message}`); return; }
      const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus"].find((t) => MediaRecorder.isTypeSupported(t));
      recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
      const chunks = [];
      const started = Date.now();
      const tick = () => {
        const s = Math.floor((Date.now() - started) / 1000);
        elapsed.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
      };
      tick();
      const timer = setInterval(tick, 250);
      recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
      recorder.onstop = async () => {
        clearInterval(timer);
        stream.getTracks().forEach((t) => t.stop());
        const blob = new Blob(chunks, { type: recorder.mimeType });
        recorder = null;
        record.textContent = "Voice note";
        record.setAttribute("aria-label", "Record a voice note");
        record.classList.remove("recording");
        elapsed.hidden = true;
        const body = new FormData();
        body.append("file", blob, blob.type.startsWith("audio/ogg") ? "voice-note.ogg" : "voice-note.webm");
        await send(body);
      };
      recorder.start();
      record.textContent = "Stop and send";
      record.setAttribute("aria-label", "Stop and send");
      record.classList.add("recording");
      elapsed.hidden = false;
    });
  }

  form?.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); form.requestSubmit(); }
  });

  list.querySelectorAll(".text.md").forEach(addCopyButtons);

  list.addEventListener("click", async (event) => {
    const copyButton = event.target.closest("button.copy");
    if (copyButton) { copy(copyButton); return; }
    const button = event.target.closest("button.retry");
    if (!button) return;
    try { render((await post(`/v1/chat/messages/${button.dataset.id}/retry`)).message); }
    catch (err) { showStatus(`Could not retry: ${err.message}`); }
  });

  const states = {
    waking: "Waking your assistant…",
    thinking: "Your assistant is thinking…",
    ready: "",
  };

  if (!following) return;
  const stream = new EventSource("/v1/chat/stream");
  stream.onmessage = (event) => {
    const e = JSON.parse(event.data);
    if (e.type === "reset") location.reload();
    else if (e.type === "message") { if (e.message.home === home) render(e.message); }
    else if (home) return; // drafts and status are of the member's own thread
    else if (e.type === "draft") renderDraft(e.reply_to, e);
    else if (e.type === "status") showStatus(e.state === "failed" ? `Your assistant could not start: ${e.detail}` : states[e.state] || "");
  };
  let opened = false;
  stream.onopen = async () => {
    // After a reconnect, catch up on whatever changed while the stream was down.
    if (opened) {
      const resp = await fetch(`/v1/chat/messages?limit=50&thread=${home ? "home" : "me"}`);
      if (resp.ok) (await resp.json()).messages.forEach(render);
    }
    opened = true;
    document.body.dataset.live = "yes";
  };
})();
