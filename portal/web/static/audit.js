// Vigil portal: re-checks an audit event's inclusion proof in the browser (audit browser,
// issue #15), from the raw proof (GET /audit/events/{id}/proof), with WebCrypto only:
//   1. the event's RFC 6962 leaf hash, SHA-256(0x00 ‖ encoding), is in its batch tree
//      (inclusion proof at its index, up to the batch root);
//   2. the batch leaf (version ‖ batch id ‖ count ‖ root) names that batch, count and root;
//   3. the batch leaf is in the log at its leaf index, up to the root of the checkpoint;
//   4. the checkpoint (a C2SP signed note: origin, size, base64 root) is signed with the
//      Ed25519 key of the verifier key, and its size is the proof's tree size.
// The algorithm is RFC 6962 §2.1.1 as in github.com/transparency-dev/merkle (proof.go).
// No inline script: this file is served as a hashed asset with Subresource Integrity.
(function () {
  "use strict";

  function hex(s) {
    if (s.length % 2 !== 0 || /[^0-9a-f]/i.test(s)) throw new Error("bad hex");
    const out = new Uint8Array(s.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
    return out;
  }
  function b64(s) {
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function concat() {
    let n = 0;
    for (const a of arguments) n += a.length;
    const out = new Uint8Array(n);
    let o = 0;
    for (const a of arguments) { out.set(a, o); o += a.length; }
    return out;
  }
  function equal(a, b) {
    if (a.length !== b.length) return false;
    let d = 0;
    for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
    return d === 0;
  }
  async function sha256(b) { return new Uint8Array(await crypto.subtle.digest("SHA-256", b)); }
  const leafHash = (b) => sha256(concat(Uint8Array.of(0), b));
  const nodeHash = (l, r) => sha256(concat(Uint8Array.of(1), l, r));
  function bitLen(x) { return x === 0 ? 0 : x.toString(2).length; }
  function onesCount(x) { let n = 0; for (const c of x.toString(2)) if (c === "1") n++; return n; }

  // rootFromInclusion computes the tree root from a leaf hash at index in a tree of size.
  async function rootFromInclusion(index, size, leaf, proof) {
    if (!(index >= 0 && index < size)) throw new Error("index " + index + " out of a tree of " + size);
    const inner = bitLen(index ^ (size - 1));
    const border = onesCount(Math.floor(index / Math.pow(2, inner)));
    if (proof.length !== inner + border) throw new Error("proof has " + proof.length + " hashes, want " + (inner + border));
    let h = leaf;
    for (let i = 0; i < inner; i++) {
      h = Math.floor(index / Math.pow(2, i)) % 2 === 0 ? await nodeHash(h, proof[i]) : await nodeHash(proof[i], h);
    }
    for (let i = inner; i < proof.length; i++) h = await nodeHash(proof[i], h);
    return h;
  }

  // openCheckpoint checks the signed note under the verifier key and returns its size and root.
  async function openCheckpoint(noteText, verifierKey) {
    const sep = noteText.indexOf("\n\n");
    if (sep < 0) throw new Error("checkpoint is not a signed note");
    const body = noteText.slice(0, sep + 1);
    const lines = body.split("\n");
    const size = Number(lines[1]);
    const root = b64(lines[2]);
    // verifier key: name+hash+base64(0x01 ‖ Ed25519 public key)
    // The key's base64 may itself hold "+": split at the first two only.
    const p1 = verifierKey.indexOf("+");
    const p2 = p1 < 0 ? -1 : verifierKey.indexOf("+", p1 + 1);
    if (p1 <= 0 || p2 !== p1 + 9) throw new Error("verifier key is malformed");
    const name = verifierKey.slice(0, p1), keyHash = verifierKey.slice(p1 + 1, p2), keyB64 = verifierKey.slice(p2 + 1);
    const key = b64(keyB64);
    if (key.length !== 33 || key[0] !== 1) throw new Error("verifier key is not an Ed25519 key");
    let signed = false;
    for (const line of noteText.slice(sep + 2).split("\n")) {
      const m = /^\u2014 (\S+) (\S+)$/.exec(line);
      if (!m || m[1] !== name) continue;
      const sig = b64(m[2]);
      if (sig.length !== 68 || Array.from(sig.slice(0, 4), (x) => x.toString(16).padStart(2, "0")).join("") !== keyHash) continue;
      const k = await crypto.subtle.importKey("raw", key.slice(1), { name: "Ed25519" }, false, ["verify"]);
      if (await crypto.subtle.verify({ name: "Ed25519" }, k, sig.slice(4), new TextEncoder().encode(body))) signed = true;
    }
    if (!signed) throw new Error("no valid signature by " + name + " on the checkpoint");
    return { size: size, root: root };
  }

  async function check(p) {
    if (p.status !== "proven") throw new Error("no complete proof yet (" + p.status + ")");
    const enc = b64(p.encoding);
    const batchRoot = hex(p.batch_root);
    const inBatch = await rootFromInclusion(p.batch_index, p.batch_count, await leafHash(enc), p.batch_proof.map(hex));
    if (!equal(inBatch, batchRoot)) throw new Error("the event is not in its batch");
    const lv = b64(p.leaf_value);
    const id = hex(p.batch_id.replace(/-/g, ""));
    const count = new Uint8Array(4);
    new DataView(count.buffer).setUint32(0, p.batch_count);
    if (lv.length !== 53 || !equal(lv.slice(1, 17), id) || !equal(lv.slice(17, 21), count) || !equal(lv.slice(21), batchRoot)) {
      throw new Error("the batch leaf does not name this batch");
    }
    const cp = await openCheckpoint(p.checkpoint, p.verifier_key);
    if (cp.size !== p.tree_size) throw new Error("checkpoint size " + cp.size + ", proof for " + p.tree_size);
    const inLog = await rootFromInclusion(p.leaf_index, p.tree_size, await leafHash(lv), p.inclusion.map(hex));
    if (!equal(inLog, cp.root)) throw new Error("the batch is not in the log under the checkpoint");
    return cp;
  }

  function start() {
    const box = document.getElementById("browser-check");
    if (!box) return;
    const out = document.getElementById("browser-verdict");
    const button = document.getElementById("recheck");
    async function run() {
      out.dataset.code = "checking";
      out.textContent = "Checking…";
      try {
        const res = await fetch(box.dataset.proofUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (!res.ok) throw new Error("the proof could not be fetched (" + res.status + ")");
        const p = await res.json();
        const cp = await check(p);
        out.dataset.code = "verified";
        out.textContent = "Verified in this browser: leaf " + p.leaf_index + " under the signed checkpoint of tree size " + cp.size + ".";
      } catch (e) {
        out.dataset.code = "proof_invalid";
        out.textContent = "NOT verified in this browser: " + e.message;
      }
    }
    button.addEventListener("click", run);
    run();
  }
  // The check itself, for anyone who wants to run it on a proof of their own (and the tests).
  window.VigilAudit = Object.freeze({ check: check });
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
