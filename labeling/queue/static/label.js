// Keyboard shortcuts on the labeling page: 1 = left (A), 2 = right (B), 3 = tie, 4 = both bad.
// Keys typed into the comment box are left alone; a form is sent once.
(function () {
  "use strict";
  var form = document.getElementById("label-form");
  if (!form) { return; }
  var slots = { "1": "left", "2": "right", "3": "tie", "4": "both_bad" };
  var sent = false;
  form.addEventListener("submit", function (event) {
    if (sent) { event.preventDefault(); }
    sent = true;
  });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat || sent) { return; }
    var target = event.target;
    if (target && (target.tagName === "TEXTAREA" || target.tagName === "SELECT" || (target.tagName === "INPUT" && target.type !== "radio"))) { return; }
    var slot = slots[event.key];
    if (!slot) { return; }
    event.preventDefault();
    form.requestSubmit(form.querySelector('button[name="slot"][value="' + slot + '"]'));
  });
})();
