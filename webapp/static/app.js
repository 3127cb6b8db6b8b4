// SeatSync's small client-side behaviours. Served from 'self' (the CSP forbids inline script).
// Everything works without it; it only improves focus after HTMX swaps.
document.addEventListener("htmx:afterSwap", (event) => {
  const swapped = event.detail.target;  // absent on some swaps (e.g. a history restore)
  const autofocus = swapped && swapped.querySelector("[autofocus]");
  if (autofocus) autofocus.focus();
});
// Lets CSS hide the buttons only a browser without JavaScript needs (e.g. "Search" in the mapping editor).
document.documentElement.classList.add("js");
// Error banners swapped in by HTMX (#htmx-banners) stay until dismissed, so a refused action is not missed.
document.addEventListener("click", (event) => {
  const dismiss = event.target.closest("[data-dismiss-banner]");
  if (dismiss) dismiss.closest(".banner").remove();
});
// A button or form with data-confirm asks before it submits (e.g. revoking an API token).
document.addEventListener("submit", (event) => {
  const asking = (event.submitter && event.submitter.closest("[data-confirm]")) || event.target.closest("[data-confirm]");
  if (asking && !window.confirm(asking.dataset.confirm)) event.preventDefault();
}, true);
// A data-copy button copies the text of the element it names (e.g. a new API token, shown once).
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  await navigator.clipboard.writeText(source.textContent.trim());
  button.textContent = "Copied";
});
