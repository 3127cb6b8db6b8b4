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
