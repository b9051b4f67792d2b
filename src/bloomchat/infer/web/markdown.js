// Safe Markdown: builds DOM nodes with textContent only. Model text never becomes HTML or script:
// no innerHTML, links only for http(s) URLs, no images. Handles fenced code, inline code,
// headings, lists, block quotes, bold, italics, links and paragraphs.
"use strict";
(function () {
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  const INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|(\*[^*\n]+\*)|(\[[^\]\n]+\]\([^)\s]+\))/;

  function inline(parent, text) {
    while (text.length) {
      const m = INLINE.exec(text);
      if (!m) { parent.appendChild(document.createTextNode(text)); return; }
      if (m.index) parent.appendChild(document.createTextNode(text.slice(0, m.index)));
      const t = m[0];
      if (m[1]) parent.appendChild(el("code", t.slice(1, -1)));
      else if (m[2]) { const b = el("strong"); inline(b, t.slice(2, -2)); parent.appendChild(b); }
      else if (m[3]) { const i = el("em"); inline(i, t.slice(1, -1)); parent.appendChild(i); }
      else {
        const close = t.indexOf("](");
        const label = t.slice(1, close), url = t.slice(close + 2, -1);
        if (/^https?:\/\//i.test(url)) {
          const a = el("a", label);
          a.href = url; a.rel = "noopener noreferrer nofollow"; a.target = "_blank";
          parent.appendChild(a);
        } else parent.appendChild(document.createTextNode(t));
      }
      text = text.slice(m.index + t.length);
    }
  }

  function render(src) {
    const frag = document.createDocumentFragment();
    const lines = src.replace(/\r\n?/g, "\n").split("\n");
    let i = 0, para = [];
    const flush = () => {
      if (!para.length) return;
      const p = el("p");
      para.forEach((l, k) => { if (k) p.appendChild(el("br")); inline(p, l); });
      frag.appendChild(p); para = [];
    };
    while (i < lines.length) {
      const line = lines[i];
      const fence = /^\s*(```|~~~)\s*([\w+#.-]*)/.exec(line);
      if (fence) {
        flush();
        const body = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
        i++; // closing fence (or end of a reply still streaming)
        const pre = el("pre", undefined, "code-block");
        if (fence[2]) pre.appendChild(el("span", fence[2], "code-lang"));
        const code = el("code", body.join("\n"));
        pre.appendChild(code);
        const copy = el("button", "Copy", "copy");
        copy.type = "button";
        copy.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(code.textContent));
        pre.appendChild(copy);
        frag.appendChild(pre);
        continue;
      }
      const h = /^(#{1,6})\s+(.*)$/.exec(line);
      if (h) { flush(); const e = el("h" + Math.min(6, h[1].length + 2)); inline(e, h[2]); frag.appendChild(e); i++; continue; }
      const li = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(line);
      if (li) {
        flush();
        const ordered = /\d/.test(li[1]);
        const list = el(ordered ? "ol" : "ul");
        while (i < lines.length) {
          const m = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(lines[i]);
          if (!m || /\d/.test(m[1]) !== ordered) break;
          const item = el("li"); inline(item, m[2]); list.appendChild(item); i++;
        }
        frag.appendChild(list);
        continue;
      }
      if (/^>\s?/.test(line)) {
        flush();
        const q = el("blockquote");
        const body = [];
        while (i < lines.length && /^>\s?/.test(lines[i])) body.push(lines[i++].replace(/^>\s?/, ""));
        q.appendChild(render(body.join("\n")));
        frag.appendChild(q);
        continue;
      }
      if (!line.trim()) { flush(); i++; continue; }
      para.push(line); i++;
    }
    flush();
    return frag;
  }

  window.renderMarkdown = render;
})();
