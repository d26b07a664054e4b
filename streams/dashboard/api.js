// Reading the worker's JSON API. Every call resolves (never rejects) to
// {ok, status, data} or {ok: false, status, error, detail}: a worker that is not ready
// answers 503 and the page says so instead of breaking.
//
// A worker with an api_token answers 401 without it: the page then asks for the token once,
// keeps it in this tab's sessionStorage (gone when the tab closes; never in a URL, a cookie
// or localStorage) and sends it as "Authorization: Bearer ..." with every read.

const TOKEN_KEY = "orchestrator.api_token";
let asking = null; // one prompt at a time, however many reads were refused at once

function authHeaders() {
  const token = window.sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function askForToken() {
  if (asking === null) {
    asking = Promise.resolve().then(() => {
      const token = window.prompt("This worker requires its API token (api_token):");
      if (token) window.sessionStorage.setItem(TOKEN_KEY, token.trim());
      else window.sessionStorage.removeItem(TOKEN_KEY);
      return Boolean(token);
    });
    asking.finally(() => {
      asking = null;
    });
  }
  return asking;
}

async function send(url) {
  const headers = { Accept: "application/json", ...authHeaders() };
  const response = await fetch(url, { headers, cache: "no-store" });
  if (response.status === 401 && (await askForToken())) {
    return fetch(url, { headers: { Accept: "application/json", ...authHeaders() }, cache: "no-store" });
  }
  return response;
}

export async function getJSON(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  let response;
  try {
    response = await send(url);
  } catch (error) {
    return { ok: false, status: 0, error: "unreachable", detail: `no answer from the worker (${error.message})` };
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.ok && body !== null) return { ok: true, status: response.status, data: body };
  return {
    ok: false,
    status: response.status,
    error: (body && body.error) || `HTTP ${response.status}`,
    detail: (body && body.detail) || response.statusText || "no detail",
  };
}

// A task id in a path: '/' (a grouped id) must travel as %2F.
export function taskPath(taskId, suffix = "") {
  return `/tasks/${encodeURIComponent(taskId)}${suffix}`;
}
