/*
 * Khalti sandbox: a stand-in for Khalti's checkout.js (the KPG-1 widget, npm
 * khalti-checkout-web 2.2.0). Served by the dj-khalti test project; no real money moves.
 *
 * Same API and behaviour as Khalti's script:
 *   var checkout = new KhaltiCheckout({publicKey, productIdentity, productName, productUrl,
 *                                      paymentPreference, eventHandler: {onSuccess, onError, onClose}});
 *   checkout.show({amount: 1000});  // paisa; the config is validated here, as Khalti's
 *                                   // loader does: an Error whose message is the JSON of the errors
 *
 * Its dialog (#sandbox-khalti-dialog) has one tab per paymentPreference (default: KHALTI,
 * EBANKING, MOBILE_BANKING, CONNECT_IPS, SCT), the first one open. The Khalti tab asks
 * for a sandbox Khalti id and MPIN; "Pay" (#sandbox-pay) takes the payment at the
 * sandbox in one step (no OTP). A bank tab opens the sandbox's bank page in a popup
 * (window.open, as Khalti's widget does), which reports back through window.opener
 * ({realm: "ebankingResponse", payload}): a page whose Cross-Origin-Opener-Policy cuts
 * the opener never hears back, as with Khalti's. Either way onSuccess gets Khalti's
 * confirm answer {idx, token, amount, mobile, product_identity, product_name,
 * product_url} plus this checkout's widget_id, then the dialog hides. "Cancel"
 * (#sandbox-cancel) and Escape hide it and call onClose.
 */
(function () {
  "use strict";

  var PAY_URL = "{{ pay_url|escapejs }}";
  var BANK_URL = "{{ bank_url|escapejs }}";
  var BANKS = JSON.parse("{{ banks|escapejs }}");
  var TEST_MOBILE = "{{ test_mobile|escapejs }}";
  var TEST_MPIN = "{{ test_mpin|escapejs }}";
  var TABS = {
    KHALTI: "Khalti Wallet",
    EBANKING: "e-Banking",
    MOBILE_BANKING: "Mobile banking",
    CONNECT_IPS: "Connect IPS",
    SCT: "SCT Card"
  };
  var DEFAULT_PREFERENCE = ["KHALTI", "EBANKING", "MOBILE_BANKING", "CONNECT_IPS", "SCT"];
  // What each bank tab puts in the popup's query beside the bank (Khalti's widget's).
  var BANK_TABS = {
    EBANKING: {banks: BANKS.sdkebanking},
    MOBILE_BANKING: {banks: BANKS.mobilecheckout, payment_type: "mobilecheckout"},
    CONNECT_IPS: {bank: "connectips", payment_type: "connectips"},
    SCT: {bank: "npay", payment_type: "sct"}
  };
  var REQUIRED = ["publicKey", "productUrl", "productIdentity", "productName", "eventHandler", "amount"];
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
    "#sandbox-khalti-dialog .sk-hint{color:#777;font-size:.75rem;margin:.6rem 0 0}",
    "#sandbox-khalti-dialog .sk-tabs{display:flex;flex-wrap:wrap;border-bottom:1px solid #e3dcef}",
    "#sandbox-khalti-dialog .sk-tabs button{flex:1 1 auto;border:0;border-bottom:2px solid transparent;",
    "border-radius:0;background:#fff;color:#5c2d91;font-size:.8rem;padding:.5rem .4rem}",
    "#sandbox-khalti-dialog .sk-tabs button[aria-selected=true]{border-bottom-color:#5c2d91;font-weight:700}",
    "#sandbox-khalti-dialog select{width:100%;padding:.45rem;font-size:1rem;border:1px solid #cbbfe0;border-radius:.4rem}",
    "#sandbox-bank-pay{background:#5c2d91;color:#fff}"
  ].join("");

  function rupees(paisa) {
    if (typeof paisa !== "number" || Math.floor(paisa) !== paisa || paisa < 0) { return "Rs ? (" + paisa + " paisa)"; }
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

  function isNullLike(value) { return value === undefined || value === null || value === ""; }

  // Khalti's loader's own checks (validatex), with its messages.
  function configErrors(config) {
    var errors = {};
    REQUIRED.forEach(function (name) {
      if (isNullLike(config[name])) { errors[name] = "This field is required."; }
    });
    if (!isNullLike(config.merchantData) && config.merchantData !== Object(config.merchantData)) {
      errors.merchantData = "Expected an object.";
    }
    if (!isNullLike(config.paymentPreference) && !Array.isArray(config.paymentPreference)) {
      errors.paymentPreference = "Expected an array.";
    }
    // As Khalti's loader: no check of the amount's type here; a bad amount is refused
    // by the payment's API (the sandbox's, as Khalti's), through onError.
    if (Object.keys(errors).length) { return errors; }
    var handler = config.eventHandler;
    var handlerErrors = {};
    if (typeof handler.onSuccess !== "function") {
      handlerErrors.onSuccess = isNullLike(handler.onSuccess) ? "This field is required." : "Expected a function.";
    }
    ["onError", "onClose"].forEach(function (name) {
      if (!isNullLike(handler[name]) && typeof handler[name] !== "function") { handlerErrors[name] = "Expected a function."; }
    });
    return Object.keys(handlerErrors).length ? {eventHandler: handlerErrors} : null;
  }

  function KhaltiCheckout(config) {
    if (!(this instanceof KhaltiCheckout)) { throw new TypeError("Cannot call a class as a function"); }
    this._widgetId = "khalti-widget-" + Date.now();
    this._config = config || {};
    this._popup = null;
    this.dialog = null;
    var self = this;
    // The bank popup's report, as Khalti's iframe receives it.
    window.addEventListener("message", function (event) {
      var data = event.data;
      if (!data || data.realm !== "ebankingResponse" || !self._popup || event.source !== self._popup) { return; }
      self._popup = null;
      if (data.payload && data.payload.idx) {
        self._succeed(data.payload);
      } else {
        self._emit("onError", data.payload);
      }
    }, false);
  }

  KhaltiCheckout.prototype._emit = function (name, value) {
    var handler = this._config.eventHandler || {};
    var callback = handler[name];
    if (typeof callback === "function") { callback.call(handler, value); }
  };

  // As Khalti's: onSuccess(confirm answer + widget_id), then hide().
  KhaltiCheckout.prototype._succeed = function (answer) {
    var payload = {widget_id: this._widgetId};
    Object.keys(answer).forEach(function (name) { payload[name] = answer[name]; });
    this._emit("onSuccess", payload);
    this.hide();
  };

  KhaltiCheckout.prototype.show = function (updates) {
    Object.assign(this._config, updates);
    var errors = configErrors(this._config);
    if (errors) { throw new Error(JSON.stringify(errors)); }
    this.hide();
    if (!document.getElementById(STYLE_ID)) {
      var style = element("style", {id: STYLE_ID});
      style.textContent = CSS;
      document.head.appendChild(style);
    }
    var self = this;
    var config = this._config;
    var tabs = (config.paymentPreference || DEFAULT_PREFERENCE).filter(function (name) { return TABS[name]; });
    var dialog = element("div", {id: "sandbox-khalti-dialog", role: "dialog", "aria-modal": "true",
                                 "aria-labelledby": "sandbox-khalti-title"});
    var box = element("div", {"class": "sk-box"});
    var head = element("div", {"class": "sk-head"});
    head.appendChild(element("strong", {id: "sandbox-khalti-title"}, "khalti"));
    head.appendChild(element("small", {}, "SANDBOX · no real money"));
    box.appendChild(head);
    var bar = element("div", {"class": "sk-tabs", role: "tablist"});
    var panels = element("div", {});
    box.appendChild(bar);  // Khalti's widget shows its tab bar for a single tab too
    box.appendChild(panels);
    tabs.forEach(function (name, index) {
      var tab = element("button", {type: "button", role: "tab", id: "sandbox-tab-" + name,
                                   "data-tab": name, "aria-selected": String(index === 0)}, TABS[name]);
      var panel = name === "KHALTI" ? self._walletPanel() : self._bankPanel(name);
      panel.hidden = index !== 0;
      tab.addEventListener("click", function () {
        Array.prototype.forEach.call(bar.children, function (other) { other.setAttribute("aria-selected", "false"); });
        Array.prototype.forEach.call(panels.children, function (other) { other.hidden = true; });
        tab.setAttribute("aria-selected", "true");
        panel.hidden = false;
      });
      bar.appendChild(tab);
      panels.appendChild(panel);
    });
    dialog.appendChild(box);
    dialog.addEventListener("keydown", function (event) {
      if (event.key === "Escape") { self._close(); }
    });
    document.body.appendChild(dialog);
    this.dialog = dialog;
    var first = dialog.querySelector(".sk-body:not([hidden]) button[type=submit]");
    if (first) { first.focus(); }
  };

  KhaltiCheckout.prototype._form = function (id) {
    var config = this._config;
    var body = element("form", {"class": "sk-body", id: id, novalidate: ""});
    body.appendChild(element("div", {}, config.productName));
    body.appendChild(element("div", {"class": "sk-amount"}, rupees(config.amount)));
    return body;
  };

  KhaltiCheckout.prototype._buttons = function (body, payId) {
    var self = this;
    var buttons = element("div", {"class": "sk-buttons"});
    var pay = element("button", {type: "submit", id: payId}, "Pay " + rupees(this._config.amount));
    var cancel = element("button", {type: "button", "class": "sandbox-cancel"}, "Cancel");
    cancel.addEventListener("click", function () { self._close(); });
    buttons.appendChild(pay);
    buttons.appendChild(cancel);
    body.appendChild(buttons);
    return {pay: pay, cancel: cancel};
  };

  KhaltiCheckout.prototype._walletPanel = function () {
    var self = this;
    var body = this._form("sandbox-panel-KHALTI");
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
    var buttons = this._buttons(body, "sandbox-pay");
    buttons.cancel.id = "sandbox-cancel";
    body.appendChild(element("p", {"class": "sk-hint"}, "Sandbox Khalti ids 9800000000 to 9800000005, MPIN " + TEST_MPIN + "."));
    body.addEventListener("submit", function (event) {
      event.preventDefault();
      buttons.pay.disabled = true;
      buttons.cancel.disabled = true;
      error.textContent = "";
      self._pay(mobile.value, mpin.value).then(function (result) {
        if (result.ok) {
          self._succeed(result.body);
          return;
        }
        buttons.pay.disabled = false;
        buttons.cancel.disabled = false;
        error.textContent = firstMessage(result.body);
        self._emit("onError", result.body);
      });
    });
    return body;
  };

  KhaltiCheckout.prototype._bankPanel = function (name) {
    var self = this;
    var tab = BANK_TABS[name];
    var body = this._form("sandbox-panel-" + name);
    var bank = null;
    if (tab.banks) {
      body.appendChild(element("label", {"for": "sandbox-bank-" + name}, "Bank"));
      bank = element("select", {id: "sandbox-bank-" + name, name: "bank"});
      tab.banks.forEach(function (choice) { bank.appendChild(element("option", {value: choice[0]}, choice[1])); });
      body.appendChild(bank);
    }
    body.appendChild(element("label", {"for": "sandbox-bank-mobile-" + name}, "Mobile number"));
    var mobile = element("input", {id: "sandbox-bank-mobile-" + name, name: "mobile", inputmode: "numeric", autocomplete: "off"});
    mobile.value = TEST_MOBILE;
    body.appendChild(mobile);
    var buttons = this._buttons(body, "sandbox-bank-pay-" + name);
    buttons.pay.className = "sandbox-bank-pay";
    body.appendChild(element("p", {"class": "sk-hint"}, "Your bank's page opens in a new window."));
    body.addEventListener("submit", function (event) {
      event.preventDefault();
      var config = self._config;
      var query = {
        public_key: config.publicKey,
        product_identity: config.productIdentity,
        product_name: config.productName,
        amount: config.amount,
        payment_type: tab.payment_type || "",
        source: "checkout_v2.1",
        bank: bank ? bank.value : tab.bank,
        mobile: mobile.value,
        product_url: config.productUrl
      };
      var search = Object.keys(query).map(function (key) {
        return encodeURIComponent(key) + "=" + encodeURIComponent(query[key]);
      }).join("&");
      self._popup = window.open(BANK_URL + "?" + search);
    });
    return body;
  };

  KhaltiCheckout.prototype._pay = function (mobile, mpin) {
    var config = this._config;
    return fetch(PAY_URL, {
      method: "POST",
      credentials: "omit",
      headers: {"Content-Type": "application/json", "Accept": "application/json"},
      body: JSON.stringify({
        public_key: config.publicKey,
        amount: config.amount,
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
