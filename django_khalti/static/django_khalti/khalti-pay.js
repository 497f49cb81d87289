/*
 * dj-khalti: Khalti's widget on a page rendered by {% khalti_widget %}. Plain ES2017, no build.
 *
 * For each [data-khalti-widget] element: read its json_script configuration, build
 * Khalti's `new KhaltiCheckout(...)`, show it when the Pay button is clicked, and
 * POST onSuccess(payload), unchanged, to dj-khalti's verify URL with the CSRF token.
 *
 * Verify's answers (django_khalti/views.py, exceptions.py):
 *   200                       verified: go to the success URL (?payment=<id>; a page of this site only), else reload.
 *   409 in_progress,          the outcome is not known yet (the payment is pending, the token
 *   502, 503, 504, 429,       kept): the same payload is sent again after 1, 2, 4, 8, 8 s.
 *   no answer, not JSON       Resubmitting is safe: dj-khalti asks Khalti's status first.
 *                             Past that, the button offers to check again (same payload).
 *   503 not_configured,       final: the answer's detail is shown (or, with a failure URL,
 *                             the buyer goes there with ?code=<its code>); no retry.
 *   400, 403, 404,
 *   409 token_used / already_paid
 *
 * Events, dispatched on the widget's element: "khalti:answer" (detail: {status, body})
 * for every answer, and "khalti:verified" (detail: the answer's body), cancelable:
 * preventDefault() keeps the buyer on the page.
 */
(function () {
  "use strict";

  var DELAYS = [1000, 2000, 4000, 8000, 8000]; // ms between attempts; ~23 s in all
  var RETRY_STATUSES = [409, 429, 502, 503, 504];

  function answerIsUnknown(response, body) {
    if (!response || body === null) { return true; } // no answer, or not ours (a proxy's HTML)
    if (response.status === 409) { return body.code === "in_progress"; }
    if (response.status === 503) { return body.code !== "not_configured"; }
    return RETRY_STATUSES.indexOf(response.status) !== -1;
  }

  // A page of this site with ?name=value; null unless it is one.
  function pageWith(url, name, value) {
    var page;
    try { page = new URL(url, window.location.href); } catch (error) { return null; }
    if (page.origin !== window.location.origin) { return null; }
    page.searchParams.set(name, value);
    return page.href;
  }

  function setUp(element) {
    var source = document.getElementById(element.getAttribute("data-khalti-widget"));
    var button = element.querySelector("[data-khalti-pay]");
    var message = element.querySelector("[data-khalti-message]");
    if (!source || !button || element.getAttribute("data-khalti-ready")) { return; }
    element.setAttribute("data-khalti-ready", "true");
    var config = JSON.parse(source.textContent);
    var text = config.messages || {};
    var label = button.textContent;
    var busy = false;
    var unconfirmed = null; // a payload whose outcome is still unknown after every retry

    function say(words) { if (message) { message.textContent = words || ""; } }

    function emit(name, detail, cancelable) {
      return element.dispatchEvent(new CustomEvent(name, {
        detail: detail, bubbles: true, cancelable: Boolean(cancelable)
      }));
    }

    function done(final) {
      busy = false;
      button.disabled = Boolean(final);
      button.textContent = unconfirmed ? (text.checkAgain || label) : label;
    }

    async function verify(payload, attempt) {
      var response = null;
      var body = null;
      try {
        response = await fetch(config.verifyUrl, {
          method: "POST",
          credentials: "same-origin",
          headers: {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-CSRFToken": config.csrfToken
          },
          body: JSON.stringify(payload)
        });
        body = await response.json();
        if (!body || typeof body !== "object") { body = null; }
      } catch (error) {
        // The network failed, or something other than dj-khalti answered: unknown.
      }
      if (response) { emit("khalti:answer", {status: response.status, body: body}); }
      if (response && response.ok && body !== null) {
        unconfirmed = null;
        say(text.verified);
        if (emit("khalti:verified", body, true)) {
          var id = body.payment && body.payment.id;
          var next = config.successUrl && id ? pageWith(config.successUrl, "payment", String(id)) : null;
          if (next) {
            window.location.assign(next);
          } else {
            window.location.reload();
          }
        }
        done(true);
        return;
      }
      if (answerIsUnknown(response, body)) {
        if (attempt <= DELAYS.length) {
          say(text.confirming);
          setTimeout(function () { verify(payload, attempt + 1); }, DELAYS[attempt - 1]);
          return;
        }
        unconfirmed = payload; // the token stays with the page: "check again" resends it
        say(text.unconfirmed);
        done(false);
        return;
      }
      unconfirmed = null;
      say((body && typeof body.detail === "string" && body.detail) || text.failed);
      done(body !== null && body.code === "already_paid");
      var code = (body && typeof body.code === "string" && body.code) || "failed";
      var failure = config.failureUrl ? pageWith(config.failureUrl, "code", code) : null;
      if (failure) { window.location.assign(failure); }
    }

    function submit(payload) {
      if (busy) { return; } // a second onSuccess, or a click, while one is being confirmed
      busy = true;
      button.disabled = true;
      say(text.confirming);
      verify(payload, 1);
    }

    if (typeof window.KhaltiCheckout !== "function") {
      say(text.unavailable);
      return;
    }
    var options = {
      publicKey: config.publicKey,
      productIdentity: config.productIdentity,
      productName: config.productName,
      productUrl: config.productUrl,
      eventHandler: {
        onSuccess: function (payload) { submit(payload); },
        onError: function (error) { console.error("Khalti widget error", error); },
        onClose: function () { if (!busy) { say(text.closed); } }
      }
    };
    if (config.paymentPreference) { options.paymentPreference = config.paymentPreference; }
    var checkout;
    try {
      checkout = new window.KhaltiCheckout(options);
    } catch (error) {
      console.error("Khalti widget error", error);
      say(text.unavailable);
      return;
    }
    button.addEventListener("click", function () {
      if (busy) { return; }
      if (unconfirmed) { submit(unconfirmed); return; }
      say("");
      checkout.show({amount: config.amount});
    });
    button.disabled = false;
  }

  function setUpAll() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-khalti-widget]"), setUp);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setUpAll);
  } else {
    setUpAll();
  }
})();
