// The dashboard's behaviour: keep the token for the session, confirm and send requests with it
// as the API's bearer token, and swap in the server's rendered updates as they stream in.
"use strict";

const TOKEN_KEY = "applyd-token";

function say(text, refused) {
  const out = document.getElementById("action-result");
  if (!out) return;
  out.textContent = text;
  out.classList.toggle("refusal", Boolean(refused));
}

document.addEventListener("submit", (event) => {
  if (event.target.id !== "login") return;
  const token = document.getElementById("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
});

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.action");
  if (!button || button.disabled) return;
  const apply = button.dataset.apply;
  const op = button.dataset.op;
  if (!window.confirm(`${button.dataset.label} apply-${apply}?`)) return;
  const headers = { "Content-Type": "application/json", "X-Applyd-Actor": "dashboard" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  let reply;
  try {
    reply = await fetch(`/v1/applies/${encodeURIComponent(apply)}/${encodeURIComponent(op)}`, {
      method: "POST",
      headers,
      credentials: "omit",
    });
  } catch (e) {
    say(`${op}: the operator could not be reached (${e})`, true);
    return;
  }
  let body = {};
  try {
    body = await reply.json();
  } catch (e) {
    body = { error: `HTTP ${reply.status}` };
  }
  if (reply.ok) {
    say(`${op} requested (${body.outcome}); the owner acts on it at its next step`, false);
  } else {
    say(`${op} refused: ${body.error || `HTTP ${reply.status}`}`, true);
  }
});

function follow() {
  const url = document.body.dataset.live;
  const target = document.getElementById("live");
  if (!url || !target || !window.EventSource) return;
  const source = new EventSource(url);
  // The server renders the fragment from its templates (escaped there); it replaces the old one.
  source.addEventListener("update", (event) => {
    target.innerHTML = event.data;
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  });
  source.addEventListener("problem", (event) => say(event.data, true));
}

document.addEventListener("DOMContentLoaded", follow);
