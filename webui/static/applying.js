// Only when the daemon answered that it restarts its services (and this UI with them) to apply a change:
// poll the health check until the UI answers again, then open the dashboard. A reload the daemon applies
// as a diff keeps the UI running, and the page just shows the daemon's answer.
(function () {
  const waiting = document.getElementById("waiting");
  if (!waiting) return;
  const health = waiting.dataset.health;
  const target = waiting.dataset.target;
  let tries = 0;
  // The first second is the old UI still answering before the daemon's reload delay passes.
  function poll() {
    tries += 1;
    fetch(health, { cache: "no-store" })
      .then((r) => { if (r.ok && tries > 3) { window.location.href = target; } else { setTimeout(poll, 500); } })
      .catch(() => setTimeout(poll, 500));
  }
  setTimeout(poll, 500);
})();
