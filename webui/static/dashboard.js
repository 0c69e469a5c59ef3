// Live dashboard: polls the summary once a second, updates the cards and draws the last minutes of each
// WAN's up/down rate (and the bond total) on its canvas. No libraries: the appliance may be offline.
(function () {
  const root = document.getElementById("dashboard");
  if (!root) return;
  const HISTORY = 300; // samples kept per graph: five minutes at one per second
  const url = root.dataset.summaryUrl;
  const known = root.dataset.wans;
  const series = {}; // graph name -> {tx: [], rx: []} in Mbit/s

  function push(name, tx, rx) {
    const s = series[name] || (series[name] = { tx: [], rx: [] });
    s.tx.push(tx / 1e6);
    s.rx.push(rx / 1e6);
    if (s.tx.length > HISTORY) { s.tx.shift(); s.rx.shift(); }
    draw(name, s);
  }

  function draw(name, s) {
    const canvas = root.querySelector(`canvas[data-graph="${CSS.escape(name)}"]`);
    if (!canvas) return;
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    const max = Math.max(1, ...s.tx, ...s.rx) * 1.1;
    [["tx", "#1f6feb"], ["rx", "#1a7f37"]].forEach(([key, color]) => {
      const values = s[key];
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      values.forEach((v, i) => {
        const x = w - (values.length - 1 - i) * (w / (HISTORY - 1));
        const y = h - (v / max) * (h - 4) - 2;
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    });
    ctx.fillStyle = "#5b6577";
    ctx.font = "11px sans-serif";
    ctx.fillText(`${max.toFixed(1)} Mbit/s`, 4, 12);
    canvas.dataset.samples = String(s.tx.length);
    canvas.dataset.last = String((s.tx[s.tx.length - 1] + s.rx[s.rx.length - 1]).toFixed(3));
  }

  function set(scope, field, text) {
    const el = scope.querySelector(`[data-field="${field}"]`);
    if (el) el.textContent = text;
  }

  function update(summary) {
    if (!summary.ok) return;
    const names = summary.wans.map((w) => w.name).join(",");
    if (names !== known) { window.location.reload(); return; } // a WAN came or went: re-render the cards
    set(root, "total.tx", (summary.total.tx_bps / 1e6).toFixed(1));
    set(root, "total.rx", (summary.total.rx_bps / 1e6).toFixed(1));
    push("total", summary.total.tx_bps, summary.total.rx_bps);
    summary.wans.forEach((wan) => {
      const card = root.querySelector(`[data-wan="${CSS.escape(wan.name)}"]`);
      if (!card) return;
      card.classList.toggle("up", wan.state === "up");
      card.classList.toggle("down", wan.state !== "up");
      set(card, "state", wan.state);
      set(card, "public", wan.public || "-");
      set(card, "rtt", wan.rtt_ms === null ? "-" : `${wan.rtt_ms.toFixed(1)} ms`);
      set(card, "loss", `${(wan.loss * 100).toFixed(1)} %`);
      set(card, "tx", (wan.tx_bps / 1e6).toFixed(1));
      set(card, "rx", (wan.rx_bps / 1e6).toFixed(1));
      set(card, "share", `${(wan.share * 100).toFixed(0)} %`);
      push(wan.name, wan.tx_bps, wan.rx_bps);
    });
    summary.peers.forEach((peer) => {
      const row = root.querySelector(`[data-peer="${CSS.escape(peer.name)}"]`);
      if (row) set(row, "connected", peer.connected ? "connected" : "not connected");
    });
    if (summary.router && summary.router.lan) set(root, "exit", summary.router.lan.exit_active ? "active" : "down");
    const events = document.getElementById("events");
    events.replaceChildren(...summary.events.slice().reverse().map((e) => {
      const li = document.createElement("li");
      li.className = e.level;
      li.textContent = `${new Date(e.time * 1000).toLocaleTimeString()} ${e.message}`;
      return li;
    }));
    document.getElementById("log").textContent = summary.log.map((l) => `${l.level} ${l.message}`).join("\n");
  }

  function poll() {
    fetch(url, { cache: "no-store" })
      .then((r) => r.json())
      .then(update)
      .catch(() => {})
      .finally(() => setTimeout(poll, 1000));
  }
  poll();
})();
