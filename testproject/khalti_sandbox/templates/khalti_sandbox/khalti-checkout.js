/*
 * Khalti sandbox: a stand-in for Khalti's checkout.js (the KPG-1 widget).
 * Served by the dj-khalti test project; no real money moves.
 *
 * Same API as Khalti's script:
 *   var checkout = new KhaltiCheckout({publicKey, productIdentity, productName, productUrl,
 *                                      eventHandler: {onSuccess, onError, onClose}});
 *   checkout.show({amount: 1000});  // paisa
 *
 * The dialog (#sandbox-khalti-dialog) asks for a sandbox Khalti id and MPIN; "Pay"
 * (#sandbox-pay) takes the payment at the sandbox and calls onSuccess with Khalti's
 * payload {idx, token, amount, mobile, product_identity, product_name, product_url,
 * widget_id}; "Cancel" (#sandbox-cancel) closes it and calls onClose.
 */
(function () {
  "use strict";

  var PAY_URL = "{{ pay_url|escapejs }}";
  var TEST_MOBILE = "{{ test_mobile|escapejs }}";
  var TEST_MPIN = "{{ test_mpin|escapejs }}";
  var REQUIRED = ["publicKey", "productIdentity", "productName", "productUrl"];
  var STYLE_ID = "sandbox-khalti-style";
  var CSS = [
    "#sandbox-khalti-dialog{position:fixed;inset:0;background:rgba(30,10,50,.55);display:flex;",
    "align-items:center;justify-content:center;z-index:2147483000;font-family:system-ui,sans-serif}",
    "#sandbox-khalti-dialog .sk-box{background:#fff;color:#222;width:min(22rem,92vw);border-radius:.75rem;",
    "overflow:hidden;box-shadow:0 10px 40px rgba(0,0,0,.3)}",
    "#sandbox-khalti-dialog .sk-head{background:#5c2d91;color:#fff;padding:.8rem 1rem;display:flex;",
    "justify-content:space-between;align-items:center}",
    "#sandbox-khalti-dialog .sk-head small{background:#ffd54f;color:#3a2500;border-radius:1rem;padding:.1rem .5rem}",
    "#sandbox-khalti-dialog .sk-body{padding:1rem}",
    "#sandbox-khalti-dialog .sk-amount{font-size:1.5rem;font-weight:700;color:#5c2d91;margin:.2rem 0 .6rem}",
    "#sandbox-khalti-dialog label{display:block;font-size:.8rem;color:#555;margin:.6rem 0 .2rem}",
    "#sandbox-khalti-dialog input{width:100%;box-sizing:border-box;padding:.5rem .6rem;font-size:1rem;",
    "border:1px solid #cbbfe0;border-radius:.4rem}",
    "#sandbox-khalti-dialog .sk-buttons{display:flex;gap:.6rem;margin-top:1rem}",
    "#sandbox-khalti-dialog button{flex:1;padding:.6rem;font-size:1rem;border-radius:.4rem;cursor:pointer;",
    "border:1px solid #5c2d91}",
    "#sandbox-pay{background:#5c2d91;color:#fff}#sandbox-pay[disabled]{opacity:.6;cursor:wait}",
    "#sandbox-cancel{background:#fff;color:#5c2d91}",
    "#sandbox-error{color:#b00020;font-size:.85rem;min-height:1.1em;margin:.6rem 0 0}",
    "#sandbox-khalti-dialog .sk-hint{color:#777;font-size:.75rem;margin:.6rem 0 0}"
  ].join("");

  function rupees(paisa) {
    var rest = String(paisa % 100);
    return "Rs " + Math.floor(paisa / 100).toLocaleString("en-US") + "." + (rest.length < 2 ? "0" + rest : rest);
  }

  function element(tag, attributes, text) {
    var node = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (name) { node.setAttribute(name, attributes[name]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function firstMessage(body) {
    if (!body || typeof body !== "object") { return "The payment could not be made."; }
    if (typeof body.detail === "string") { return body.detail; }
    for (var field in body) {
      var messages = body[field];
      if (Array.isArray(messages) && messages.length) { return messages[0]; }
    }
    return "The payment could not be made.";
  }

  function KhaltiCheckout(config) {
    if (!(this instanceof KhaltiCheckout)) { throw new TypeError("KhaltiCheckout is a constructor: use new."); }
    config = config || {};
    REQUIRED.forEach(function (name) {
      if (!config[name]) { throw new Error("KhaltiCheckout: " + name + " is required."); }
    });
    this.config = config;
    this.handler = config.eventHandler || {};
    this.dialog = null;
    this.amount = null;
  }

  KhaltiCheckout.prototype._emit = function (name, value) {
    var callback = this.handler[name];
    if (typeof callback === "function") { callback.call(this.handler, value); }
  };

  KhaltiCheckout.prototype.show = function (options) {
    var amount = options && options.amount;
    if (typeof amount !== "number" || !isFinite(amount) || Math.floor(amount) !== amount || amount <= 0) {
      throw new Error("KhaltiCheckout.show: amount must be a whole number of paisa.");
    }
    this.hide();
    this.amount = amount;
    if (!document.getElementById(STYLE_ID)) {
      var style = element("style", {id: STYLE_ID});
      style.textContent = CSS;
      document.head.appendChild(style);
    }
    var self = this;
    var dialog = element("div", {id: "sandbox-khalti-dialog", role: "dialog", "aria-modal": "true",
                                 "aria-labelledby": "sandbox-khalti-title"});
    var box = element("div", {"class": "sk-box"});
    var head = element("div", {"class": "sk-head"});
    head.appendChild(element("strong", {id: "sandbox-khalti-title"}, "khalti"));
    head.appendChild(element("small", {}, "SANDBOX · no real money"));
    var body = element("form", {"class": "sk-body", novalidate: ""});
    body.appendChild(element("div", {}, this.config.productName));
    body.appendChild(element("div", {"class": "sk-amount", id: "sandbox-amount"}, rupees(amount)));
    body.appendChild(element("label", {"for": "sandbox-mobile"}, "Khalti ID (mobile)"));
    var mobile = element("input", {id: "sandbox-mobile", name: "mobile", inputmode: "numeric", autocomplete: "off"});
    mobile.value = TEST_MOBILE;
    body.appendChild(mobile);
    body.appendChild(element("label", {"for": "sandbox-mpin"}, "Khalti MPIN"));
    var mpin = element("input", {id: "sandbox-mpin", name: "mpin", type: "password", inputmode: "numeric", autocomplete: "off"});
    mpin.value = TEST_MPIN;
    body.appendChild(mpin);
    var error = element("p", {id: "sandbox-error", role: "alert"});
    body.appendChild(error);
    var buttons = element("div", {"class": "sk-buttons"});
    var pay = element("button", {type: "submit", id: "sandbox-pay"}, "Pay " + rupees(amount));
    var cancel = element("button", {type: "button", id: "sandbox-cancel"}, "Cancel");
    buttons.appendChild(pay);
    buttons.appendChild(cancel);
    body.appendChild(buttons);
    body.appendChild(element("p", {"class": "sk-hint"}, "Sandbox Khalti ids 9800000000 to 9800000005, MPIN " + TEST_MPIN + "."));
    box.appendChild(head);
    box.appendChild(body);
    dialog.appendChild(box);

    body.addEventListener("submit", function (event) {
      event.preventDefault();
      pay.disabled = true;
      cancel.disabled = true;
      error.textContent = "";
      self._pay(mobile.value, mpin.value).then(function (result) {
        if (result.ok) {
          self.hide();
          self._emit("onSuccess", result.body);
          return;
        }
        pay.disabled = false;
        cancel.disabled = false;
        error.textContent = firstMessage(result.body);
        self._emit("onError", result.body);
      });
    });
    cancel.addEventListener("click", function () { self._close(); });
    dialog.addEventListener("keydown", function (event) {
      if (event.key === "Escape") { self._close(); }
    });
    document.body.appendChild(dialog);
    this.dialog = dialog;
    pay.focus();
  };

  KhaltiCheckout.prototype._pay = function (mobile, mpin) {
    var config = this.config;
    return fetch(PAY_URL, {
      method: "POST",
      credentials: "omit",
      headers: {"Content-Type": "application/json", "Accept": "application/json"},
      body: JSON.stringify({
        public_key: config.publicKey,
        amount: this.amount,
        product_identity: String(config.productIdentity),
        product_name: String(config.productName),
        product_url: String(config.productUrl),
        mobile: mobile,
        mpin: mpin
      })
    }).then(function (response) {
      return response.json().then(
        function (body) { return {ok: response.ok, body: body}; },
        function () { return {ok: false, body: {detail: "Khalti answered HTTP " + response.status + "."}}; }
      );
    }, function () {
      return {ok: false, body: {detail: "Khalti could not be reached."}};
    });
  };

  KhaltiCheckout.prototype._close = function () {
    this.hide();
    this._emit("onClose");
  };

  KhaltiCheckout.prototype.hide = function () {
    if (this.dialog && this.dialog.parentNode) { this.dialog.parentNode.removeChild(this.dialog); }
    this.dialog = null;
  };

  window.KhaltiCheckout = KhaltiCheckout;
})();
