// Follow a fleet restart on the settings page until it ends.
(() => {
  const line = document.getElementById("restart-progress");
  if (!line || line.dataset.state !== "running") return;
  const timer = setInterval(async () => {
    const resp = await fetch("/v1/admin/restart-all");
    if (!resp.ok) return;
    const p = (await resp.json()).progress;
    line.dataset.state = p.state;
    if (p.state === "running") line.textContent = `Recreating runtimes: ${p.done} of ${p.total ?? "?"}…`;
    else {
      line.textContent = p.state === "done" ? `Every runtime was recreated (${p.total}).`
        : `Restart finished with failures: ${p.error || p.failed.length}`;
      clearInterval(timer);
    }
  }, 1000);
})();
