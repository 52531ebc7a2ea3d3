// Every page: hand the browser the service worker (/sw.js), which keeps the app's shell for
// offline use and shows the agent's notifications (static/sw.js).
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch((error) => {
    console.warn("the service worker could not be registered:", error);
  });
}
