// /account's Notifications card: subscribe this browser to Web Push (pushManager.subscribe with
// the host's VAPID key from /v1/push/key) and hand the subscription to /v1/push/subscriptions,
// or take it back. What the member is told of (the checkboxes) is the card's own form.
(() => {
  const state = document.getElementById("push-state");
  const enable = document.getElementById("push-enable");
  const disable = document.getElementById("push-disable");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  function show(text, subscribed) {
    state.textContent = text;
    enable.hidden = subscribed;
    disable.hidden = !subscribed;
  }

  function bytes(base64url) {
    const text = atob(base64url.replace(/-/g, "+").replace(/_/g, "/"));
    return Uint8Array.from(text, (c) => c.charCodeAt(0));
  }

  async function call(method, path, body) {
    const response = await fetch(path, {
      method,
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      throw new Error(answer.error || response.statusText);
    }
    return response.status === 204 ? {} : response.json();
  }

  async function subscribe() {
    enable.disabled = true;
    try {
      if ((await Notification.requestPermission()) !== "granted") {
        show("This browser was not allowed to show notifications: allow them in its settings.", false);
        return;
      }
      const registration = await navigator.serviceWorker.ready;
      const { public_key } = await call("GET", "/v1/push/key");
      const subscription = await registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: bytes(public_key),
      });
      await call("POST", "/v1/push/subscriptions", subscription.toJSON());
      show("Notifications are on for this device.", true);
    } catch (error) {
      show("Notifications could not be turned on: " + error.message, false);
    } finally {
      enable.disabled = false;
    }
  }

  async function unsubscribe() {
    const registration = await navigator.serviceWorker.ready;
    const subscription = await registration.pushManager.getSubscription();
    if (subscription) {
      await call("DELETE", "/v1/push/subscriptions", { endpoint: subscription.endpoint }).catch(() => {});
      await subscription.unsubscribe();
    }
    show("Notifications are off for this device.", false);
  }

  async function start() {
    if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) {
      show("This browser cannot show notifications from a website.", false);
      enable.hidden = true;
      return;
    }
    const registration = await navigator.serviceWorker.ready;
    const subscription = await registration.pushManager.getSubscription();
    if (subscription && Notification.permission === "granted") {
      show("Notifications are on for this device.", true);
    } else {
      show("Notifications are off for this device.", false);
    }
  }

  enable.addEventListener("click", subscribe);
  disable.addEventListener("click", unsubscribe);
  start();
})();
