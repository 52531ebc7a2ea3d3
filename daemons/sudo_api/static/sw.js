// Sudo's service worker, served at /sw.js so that its scope is the whole site.
// - The app's shell (style, scripts, icons, the offline page) is cached when it installs; a
//   page that cannot be loaded for want of a network shows the offline page instead of the
//   browser's error. Nothing else is cached: the pages hold a family's messages.
// - A Web Push message (sudo_api/push.py: {title, body, url}) is shown as a notification; a
//   click on it brings an open Sudo window to its url, or opens one.
const SHELL = "sudo-shell-v1";
const OFFLINE = "/static/offline.html";
const SHELL_FILES = [
  OFFLINE,
  "/static/sudo.css",
  "/static/pwa.js",
  "/static/chat.js",
  "/static/notifications.js",
  "/static/icon-192.png",
  "/static/icon-512.png",
  "/static/icon-maskable-512.png",
  "/manifest.webmanifest",
];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL).then((cache) => cache.addAll(SHELL_FILES)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((name) => name !== SHELL).map((name) => caches.delete(name))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  if (request.mode === "navigate") {
    event.respondWith(fetch(request).catch(() => caches.match(OFFLINE)));
  } else if (SHELL_FILES.includes(url.pathname)) {
    // The network first, so a new release's files are used at once; the copy when offline.
    event.respondWith(fetch(request).catch(() => caches.match(url.pathname)));
  }
});

self.addEventListener("push", (event) => {
  let message = {};
  try {
    message = event.data ? event.data.json() : {};
  } catch (error) {
    message = { body: event.data.text() };
  }
  // Only a path of this site: never another site's address ("//host" included).
  const path = typeof message.url === "string" && /^\/(?!\/)/.test(message.url) ? message.url : "/chat";
  event.waitUntil(
    self.registration.showNotification(message.title || "Sudo", {
      body: message.body || "",
      icon: "/static/icon-192.png",
      badge: "/static/icon-192.png",
      tag: path,
      data: { url: path },
    }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = new URL(event.notification.data.url, self.location.origin).href;
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((windows) => {
      const open = windows.find((client) => new URL(client.url).origin === self.location.origin);
      if (!open) return self.clients.openWindow(url);
      // Focus may be refused (no user activation left): the window still turns to the thread.
      const focused = open.focus().catch(() => open);
      return focused.then((client) => (client.url === url ? client : client.navigate(url)));
    }),
  );
});
