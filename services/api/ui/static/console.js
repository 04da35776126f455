// Slice viewer: a range input picks the slice; the server draws it (outlines, error map, the slice's DSC).
(function () {
  const viewer = document.getElementById("viewer");
  if (!viewer) { return; }
  const slider = document.getElementById("slice");
  const image = document.getElementById("slice-image");
  slider.addEventListener("input", function () {
    document.getElementById("slice-number").textContent = slider.value;
    image.src = viewer.dataset.base + slider.value + ".png";
  });
})();

// Live job progress: poll the job's JSON every 2 s, update the bar and fields, refresh the loss curve.
(function () {
  const panel = document.getElementById("job-live");
  if (!panel) { return; }
  const url = panel.dataset.url;
  const curve = document.getElementById("loss-curve");
  const terminal = ["succeeded", "failed", "cancelled"];
  async function tick() {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) { return; }
    const job = await response.json();
    document.getElementById("job-status").textContent = job.status;
    document.getElementById("job-status").className = "status-" + job.status;
    document.getElementById("job-stage").textContent = job.stage;
    document.getElementById("job-iteration").textContent = job.iteration + " / " + job.total_iterations;
    document.getElementById("job-eta").textContent = job.eta_s ? Math.round(job.eta_s) + " s" : "-";
    document.getElementById("job-best").textContent = job.best_val_dice === null ? "-" : (100 * job.best_val_dice).toFixed(1);
    document.getElementById("job-bar").style.width = Math.round(100 * job.progress) + "%";
    document.getElementById("job-error").textContent = job.error || "";
    if (curve) { curve.src = curve.dataset.src + "?t=" + Date.now(); }
    if (job.model_id) {
      const link = document.getElementById("job-model");
      link.href = link.dataset.base + job.model_id;
      link.textContent = "model " + job.model_id;
    }
    if (!terminal.includes(job.status)) { setTimeout(tick, 2000); } else { panel.dataset.done = job.status; }
  }
  tick();
})();
