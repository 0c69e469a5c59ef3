// Live dashboard: polls the summary once a second, updates the cards and draws the last minutes of each
// WAN's up/down rate (and the bond total) on its canvas. No libraries: the appliance may be offline.
//
// WAN names may come from a peer: cards are found by the key the server derives (never by a name), names
// are set as text only, and a WAN that comes or goes adds or removes its card (the page never reloads for
// it; only a page rendered while the daemon was down loads again, once the daemon answers).
(function () {
  // Rendered while the daemon did not answer (it restarts to apply a change): load the page again, once,
  // when it answers.
  const down = document.getElementById("daemon-down");
  if (down) {
    const retry = () => fetch(down.dataset.summaryUrl, { cache: "no-store" })
      .then((r) => { if (r.ok) window.location.reload(); else setTimeout(retry, 1000); })
      .catch(() => setTimeout(retry, 1000));
    setTimeout(retry, 1000);
  }
})();

(function () {
  const root = document.getElementById("dashboard");
  if (!root) return;
  const HISTORY = 300; // samples kept per graph: five minutes at one per second
  const url = root.dataset.summaryUrl;
  const cardsBox = root.querySelector(".cards");
  const noWans = root.querySelector("[data-no-wans]");
  const cardTemplate = document.getElementById("wan-card");
  const totalGraph = root.querySelector('canvas[data-graph="total"]');
  const series = new Map(); // graph key -> {tx: [], rx: []} in Mbit/s
  const cards = new Map(); // WAN key -> card element
  root.querySelectorAll("[data-wan-key]").forEach((card) => cards.set(card.dataset.wanKey, card));
  const peerRows = new Map();
  root.querySelectorAll("[data-peer-key]").forEach((row) => peerRows.set(row.dataset.peerKey, row));

  function push(key, canvas, tx, rx) {
    if (!series.has(key)) series.set(key, { tx: [], rx: [] });
    const s = series.get(key);
    s.tx.push(tx / 1e6);
    s.rx.push(rx / 1e6);
    if (s.tx.length > HISTORY) { s.tx.shift(); s.rx.shift(); }
    draw(canvas, s);
  }

  function draw(canvas, s) {
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

  function cardFor(wan) {
    let card = cards.get(wan.key);
    if (!card) {
      card = cardTemplate.content.firstElementChild.cloneNode(true);
      card.dataset.wanKey = wan.key;
      cardsBox.insertBefore(card, noWans);
      cards.set(wan.key, card);
    }
    return card;
  }

  function updateWans(wans) {
    const live = new Set(wans.map((wan) => wan.key));
    cards.forEach((card, key) => {
      if (!live.has(key)) { card.remove(); cards.delete(key); series.delete(key); }
    });
    if (noWans) noWans.hidden = wans.length > 0;
    wans.forEach((wan) => {
      const card = cardFor(wan);
      card.dataset.wan = wan.name;
      card.classList.toggle("up", wan.state === "up");
      card.classList.toggle("down", wan.state !== "up");
      set(card, "name", wan.name);
      set(card, "state", wan.state);
      card.querySelector('[data-field="backup"]').hidden = !wan.backup;
      set(card, "public", wan.public || "-");
      set(card, "address", wan.address || "-");
      set(card, "nat", wan.nat || "-");
      set(card, "rtt", wan.rtt_ms === null ? "-" : `${wan.rtt_ms.toFixed(1)} ms`);
      set(card, "loss", `${(wan.loss * 100).toFixed(1)} %`);
      set(card, "tx", (wan.tx_bps / 1e6).toFixed(1));
      set(card, "rx", (wan.rx_bps / 1e6).toFixed(1));
      set(card, "share", `${(wan.share * 100).toFixed(0)} %`);
      push(wan.key, card.querySelector("canvas"), wan.tx_bps, wan.rx_bps);
    });
  }

  function update(summary) {
    if (!summary.ok) return;
    set(root, "total.tx", (summary.total.tx_bps / 1e6).toFixed(1));
    set(root, "total.rx", (summary.total.rx_bps / 1e6).toFixed(1));
    set(root, "system", summary.system);
    push("total", totalGraph, summary.total.tx_bps, summary.total.rx_bps);
    updateWans(summary.wans);
    summary.peers.forEach((peer) => {
      const row = peerRows.get(peer.key);
      if (!row) return;
      set(row, "connected", peer.connected ? "connected" : "not connected");
      set(row, "punches", String(peer.punch_attempts));
    });
    const p = summary.punch;
    set(root, "punch", `Hole punching: ${p.attempts} attempt(s), ${p.successes} punched path(s) up, ` +
      `${p.forwarded} forwarded for other members, ${p.refused} refused, ${p.skipped} not tried (both NATs random), ` +
      `birthday probes ${p.probe_hits} hit / ${p.probe_misses} missed`);
    const lane = document.getElementById("lane");
    lane.hidden = !summary.lane;
    lane.textContent = summary.lane ? summary.lane.line : "";
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
