// Passkey ceremonies on Warden's sign-in and account pages (src/http/oauth.rs,
// src/http/account.rs). The server renders everything a ceremony needs into the form's
// data-* attributes, including a challenge it sealed; this script only asks the browser
// (navigator.credentials) and posts the answer, as WebAuthn's toJSON() shapes it, in the
// form's hidden `credential` field. Every check happens on the server.
"use strict";

(function () {
  function encode(buffer) {
    let text = "";
    for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function decode(text) {
    const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  }

  function credentialJson(credential) {
    const response = credential.response;
    const json = {
      id: credential.id,
      rawId: encode(credential.rawId),
      type: credential.type,
      response: { clientDataJSON: encode(response.clientDataJSON) },
      clientExtensionResults: credential.getClientExtensionResults(),
    };
    if (response.attestationObject) {
      json.response.attestationObject = encode(response.attestationObject);
      json.response.transports = response.getTransports ? response.getTransports() : [];
    } else {
      json.response.authenticatorData = encode(response.authenticatorData);
      json.response.signature = encode(response.signature);
      json.response.userHandle = response.userHandle ? encode(response.userHandle) : null;
    }
    return JSON.stringify(json);
  }

  function options(form) {
    const data = form.dataset;
    const publicKey = {
      challenge: decode(data.challenge),
      userVerification: data.uv,
      timeout: 120000,
    };
    if (data.passkey === "get") {
      publicKey.rpId = data.rpId;
      // Confirming a password sign-in: the user's own passkeys; otherwise any of this site's.
      publicKey.allowCredentials = (data.allow ? data.allow.split(",") : []).map((id) => ({
        type: "public-key",
        id: decode(id),
      }));
      return { publicKey };
    }
    publicKey.rp = { id: data.rpId, name: data.rpName };
    publicKey.user = { id: decode(data.userId), name: data.userName, displayName: data.userName };
    publicKey.pubKeyCredParams = data.algs.split(",").map((alg) => ({ type: "public-key", alg: Number(alg) }));
    publicKey.excludeCredentials = (data.exclude ? data.exclude.split(",") : []).map((id) => ({
      type: "public-key",
      id: decode(id),
    }));
    publicKey.authenticatorSelection = {
      residentKey: "required",
      requireResidentKey: true,
      userVerification: data.uv,
    };
    publicKey.attestation = "none";
    return { publicKey };
  }

  async function run(form) {
    const error = form.querySelector(".error");
    error.hidden = true;
    if (!form.reportValidity()) return;
    if (!window.PublicKeyCredential) {
      throw new Error("This browser does not support passkeys.");
    }
    const request = options(form);
    const credential =
      form.dataset.passkey === "get"
        ? await navigator.credentials.get(request)
        : await navigator.credentials.create(request);
    form.elements.credential.value = credentialJson(credential);
    form.submit();
  }

  document.addEventListener("DOMContentLoaded", function () {
    for (const form of document.querySelectorAll("form[data-passkey]")) {
      const button = form.querySelector("[data-passkey-start]");
      button.addEventListener("click", function () {
        run(form).catch(function (failure) {
          const error = form.querySelector(".error");
          error.textContent =
            failure && failure.name === "NotAllowedError"
              ? "The passkey request was cancelled or timed out."
              : String((failure && failure.message) || failure);
          error.hidden = false;
        });
      });
    }
  });
})();
