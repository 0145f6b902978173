// Shared by the operator console and the admin page: token handling and JSON calls.
const Switchboard = (() => {
  const KEY = "switchboard.token";
  let config = { ingest_url: "http://127.0.0.1:8001", stats_url: "http://127.0.0.1:8004" };

  function token() { return localStorage.getItem(KEY) || ""; }
  function setToken(value) { localStorage.setItem(KEY, value.trim()); }
  function clearToken() { localStorage.removeItem(KEY); }

  function claims() {
    try {
      const part = token().split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      // atob gives one character per byte: decode them as UTF-8, or a non-ASCII sub comes out garbled
      // (and the console's replies would name an operator that does not exist).
      const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) { return null; }
  }

  async function loadConfig() {
    const r = await fetch("/v1/console/config");
    if (r.ok) config = await r.json();
    return config;
  }

  async function call(method, url, body) {
    const headers = { "Authorization": "Bearer " + token() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (r.status === 204) return { status: 204, body: null };
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const msg = data && data.error ? `${data.error.code}: ${data.error.message}` : `HTTP ${r.status}`;
      const err = new Error(msg); err.status = r.status; throw err;
    }
    return { status: r.status, body: data };
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
    return node;
  }

  function signIn(form, onReady) {
    const input = form.querySelector("input");
    form.addEventListener("submit", (ev) => { ev.preventDefault(); setToken(input.value); onReady(); });
  }

  // The session both pages share: the sign-in card (#signin, #signin-form), the header's #who and
  // #signout, and the page's own part (`content`), shown only to a token of `role`. Once signed in,
  // the config is loaded and `onReady(claims)` runs; signing out (the button, or the page calling the
  // returned `signOut` on a 401) forgets the token and runs `onSignOut` first.
  function session({ role, content, onReady, onSignOut }) {
    const $ = (id) => document.getElementById(id);
    async function show() {
      const c = claims();
      const ok = !!c && c.role === role;
      $("signin").hidden = ok; content.hidden = !ok; $("signout").hidden = !ok;
      $("who").textContent = ok ? `signed in as ${c.sub}` : "";
      if (ok) { await loadConfig(); await onReady(c); }
    }
    function signOut() { clearToken(); if (onSignOut) onSignOut(); show(); }
    $("signout").onclick = signOut;
    signIn($("signin-form"), show);
    show();
    return { signOut };
  }

  return { token, setToken, clearToken, claims, loadConfig, call, el, session, get config() { return config; } };
})();
