// Reading the worker's JSON API. Every call resolves (never rejects) to
// {ok, status, data} or {ok: false, status, error, detail}: a worker that is not ready
// answers 503 and the page says so instead of breaking.

export async function getJSON(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
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
