/* The dashboard's sign-in, used only when reading needs a login (PUBLIC_READ is off).
 *
 * The staff login is the API's own: POST /api/v1/auth/token (OAuth2 password form) returns a
 * short-lived JWT. It is kept in sessionStorage (this tab only, gone when the tab closes) and
 * sent as `Authorization: Bearer` to /dashboard/panel, which checks it like any API read and
 * answers the charts as server-rendered HTML. No cookie is set, so no other site can make the
 * browser fetch the data on the user's behalf. Inlined with the page's CSP nonce. */
(function () {
  "use strict";
  var KEY = "pir.dashboard.token";
  var panel = document.getElementById("panel");
  if (!panel || panel.getAttribute("data-auth") !== "token") {
    return;
  }
  var box = document.getElementById("login-box");
  var form = document.getElementById("login");
  var msg = document.getElementById("login-msg");
  var logout = document.getElementById("logout");

  function storage() {
    try {
      return window.sessionStorage;
    } catch (e) {
      return null;
    }
  }

  function showLogin(text) {
    panel.innerHTML = "";
    panel.setAttribute("aria-busy", "false");
    box.hidden = false;
    logout.hidden = true;
    msg.textContent = text || "";
    document.getElementById("username").focus();
  }

  function loadPanel() {
    var store = storage();
    var token = store && store.getItem(KEY);
    if (!token) {
      showLogin("");
      return;
    }
    panel.setAttribute("aria-busy", "true");
    fetch("/dashboard/panel" + window.location.search, {
      headers: { Authorization: "Bearer " + token, Accept: "text/html" },
      cache: "no-store",
      credentials: "omit",
    })
      .then(function (response) {
        if (response.status === 401 || response.status === 403) {
          store.removeItem(KEY);
          showLogin(
            response.status === 401
              ? "登录已过期，请重新登录。Your session has expired."
              : "此账号无权查看。This account may not read the registry."
          );
          return null;
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        if (html === null) {
          return;
        }
        box.hidden = true;
        logout.hidden = false;
        panel.innerHTML = html; // server-rendered, escaped HTML from this origin
        panel.setAttribute("aria-busy", "false");
      })
      .catch(function (error) {
        panel.setAttribute("aria-busy", "false");
        panel.innerHTML = "";
        var p = document.createElement("p");
        p.className = "empty";
        p.setAttribute("role", "alert");
        p.textContent = "看板加载失败 Could not load the dashboard (" + error.message + ")";
        panel.appendChild(p);
      });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    msg.textContent = "正在登录… Signing in…";
    fetch("/api/v1/auth/token", {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      credentials: "omit",
    })
      .then(function (response) {
        if (response.ok) {
          return response.json();
        }
        if (response.status === 429) {
          throw new Error("尝试次数过多，请稍后再试。Too many attempts; try again later.");
        }
        if (response.status === 401) {
          throw new Error("用户名或密码错误。Wrong username or password.");
        }
        throw new Error("登录失败 Sign-in failed (HTTP " + response.status + ")");
      })
      .then(function (body) {
        var store = storage();
        if (!store) {
          throw new Error("浏览器禁止了会话存储 Session storage is blocked.");
        }
        store.setItem(KEY, body.access_token);
        form.reset();
        msg.textContent = "";
        loadPanel();
      })
      .catch(function (error) {
        msg.textContent = error.message;
      });
  });

  logout.addEventListener("click", function () {
    var store = storage();
    if (store) {
      store.removeItem(KEY);
    }
    showLogin("已退出。Signed out.");
  });

  loadPanel();
})();
