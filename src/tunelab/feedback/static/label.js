// Ranking by mouse or keyboard; the <select> of each completion holds its rank.
"use strict";
(function () {
  const form = document.getElementById("ranking");
  if (!form) return;
  const cards = Array.from(form.querySelectorAll(".completion"));
  const status = document.getElementById("status");
  const history = []; // cards in the order they were ranked, for undo and ties
  let flagNext = false;

  const selectOf = (card) => card.querySelector("select");
  const rankOf = (card) => selectOf(card).value;

  function refresh() {
    for (const card of cards) {
      const value = rankOf(card);
      card.classList.toggle("ranked", value !== "" && value !== "x");
      card.classList.toggle("irrelevant", value === "x");
    }
  }

  function nextRank(tie) {
    const used = cards.map(rankOf).filter((v) => v !== "" && v !== "x").map(Number);
    if (used.length === 0) return 1;
    const last = history.length ? Number(rankOf(history[history.length - 1])) : NaN;
    if (tie) return Number.isFinite(last) ? last : Math.max(...used);
    return Math.max(...used) + 1;
  }

  function rank(card, tie) {
    if (rankOf(card) !== "") return; // already ranked or flagged: undo or use its menu
    selectOf(card).value = String(Math.min(nextRank(tie), cards.length));
    history.push(card);
    refresh();
  }

  function flag(card) {
    selectOf(card).value = "x";
    history.push(card);
    refresh();
  }

  function undo() {
    const card = history.pop();
    if (card) selectOf(card).value = "";
    refresh();
  }

  function reset() {
    history.length = 0;
    for (const card of cards) selectOf(card).value = "";
    refresh();
  }

  for (const card of cards) {
    card.querySelector(".text").addEventListener("click", (event) => rank(card, event.shiftKey));
    selectOf(card).addEventListener("change", () => {
      const at = history.indexOf(card);
      if (at >= 0) history.splice(at, 1);
      if (rankOf(card) !== "") history.push(card);
      refresh();
    });
  }

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLSelectElement || event.ctrlKey || event.metaKey || event.altKey) return;
    const digit = /^Digit([1-9])$/.exec(event.code);
    if (digit) {
      const card = cards[Number(digit[1]) - 1];
      if (!card) return;
      event.preventDefault();
      if (flagNext) { flag(card); flagNext = false; } else rank(card, event.shiftKey);
    } else if (event.key === "x") { flagNext = true; status.textContent = "not relevant: press the completion's number"; }
    else if (event.key === "u") undo();
    else if (event.key === "r") reset();
    else if (event.key === "Enter") { event.preventDefault(); submit(); }
  });

  async function post(body, attempts) {
    // A retry resends the same submission id: the server stores it once.
    for (let i = 1; ; i++) {
      try {
        return await fetch("/api/judgements", {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify(body), credentials: "same-origin",
        });
      } catch (error) {
        if (i >= attempts) throw error;
        await new Promise((resolve) => setTimeout(resolve, 500 * i));
      }
    }
  }

  async function submit() {
    const ranks = {};
    for (const card of cards) {
      const value = rankOf(card);
      if (value === "") {
        status.className = "error";
        status.textContent = "Rank every completion, or flag it not relevant.";
        return;
      }
      ranks[card.dataset.id] = value === "x" ? null : Number(value);
    }
    status.className = "";
    status.textContent = "saving…";
    const body = {
      prompt_id: Number(form.dataset.promptId), submission_id: form.dataset.submissionId,
      ranks: ranks,
    };
    try {
      const response = await post(body, 3);
      if (response.ok) { status.textContent = "saved"; window.location.assign("/label"); return; }
      const answer = await response.json().catch(() => ({ error: response.statusText }));
      status.className = "error";
      status.textContent = answer.error || "the server refused this ranking";
    } catch (error) {
      status.className = "error";
      status.textContent = "could not reach the server; your ranking is still here, submit again";
    }
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); submit(); });
  refresh();
})();
