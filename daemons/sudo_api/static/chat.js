// Live chat: send through /v1, follow /v1/chat/stream (server-sent events), render in place.
// Without this script the page still works through its form. The Home thread (the family's
// voice turns) has no form: it only follows the stream's Home messages.
(() => {
  const list = document.getElementById("messages");
  const home = list.dataset.thread === "home";
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

  function render(m) {
    const draft = m.reply_to && drafts.get(m.reply_to);
    if (m.role === "assistant" && draft) { draft.remove(); drafts.delete(m.reply_to); }
    const li = element(m.id);
    li.className = `message ${m.role} ${m.status}`;
    li.dataset.n = m.n;
    li.querySelector(".who").textContent = m.role === "user" ? m.sender : "Assistant";
    li.querySelector(".when").textContent = clock(m.created_at);
    li.querySelector(".text").textContent = m.text;
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

  function renderDraft(replyTo, text) {
    let li = drafts.get(replyTo);
    if (!li) {
      li = document.createElement("li");
      li.className = "message assistant draft";
      li.innerHTML = '<span class="who">Assistant</span><div class="text"></div>';
      list.appendChild(li);
      drafts.set(replyTo, li);
    }
    li.querySelector(".text").textContent = text;
    showStatus("");
    li.scrollIntoView({ block: "end" });
  }

  async function post(url, body) {
    const resp = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    return data;
  }

  form?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = form.text.value.trim();
    if (!text) return;
    try {
      const { message } = await post("/v1/chat/messages", { text });
      form.text.value = "";
      render(message);
    } catch (err) {
      showStatus(`Could not send: ${err.message}`);
    }
  });

  form?.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });

  list.addEventListener("click", async (event) => {
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

  const stream = new EventSource("/v1/chat/stream");
  stream.onmessage = (event) => {
    const e = JSON.parse(event.data);
    if (e.type === "reset") location.reload();
    else if (e.type === "message") { if (e.message.home === home) render(e.message); }
    else if (home) return; // drafts and status are of the member's own thread
    else if (e.type === "draft") renderDraft(e.reply_to, e.text);
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
