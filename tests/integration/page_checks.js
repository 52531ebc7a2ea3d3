// The checks tests/integration/test_pages_phone.py runs in each page: one expression, an object
// of functions. `shown(el)`: rendered and visible (in a scroller's hidden part counts as shown:
// it is one swipe away).
(() => {
  const shown = (el) => el.checkVisibility({ visibilityProperty: true, opacityProperty: true })
    && el.getClientRects().length > 0;
  const describe = (el) => {
    const text = (el.getAttribute("aria-label") || el.textContent || el.getAttribute("placeholder")
      || el.name || "").trim().replace(/\s+/g, " ").slice(0, 40);
    const id = el.id ? "#" + el.id : "";
    const classes = typeof el.className === "string" && el.className.trim()
      ? "." + el.className.trim().replace(/\s+/g, ".") : "";
    return `${el.tagName.toLowerCase()}${id}${classes} "${text}"`;
  };
  const CONTROLS = 'a[href], button, input:not([type="hidden"]), select, textarea, summary,'
    + ' [role="button"], [tabindex]:not([tabindex="-1"])';

  function smallTargets(tap) {
    // WCAG 2.5.8's inline exception: a link within a sentence keeps the sentence's line height.
    const inSentence = (el) => el.tagName === "A" && getComputedStyle(el).display === "inline"
      && el.parentElement.textContent.trim() !== el.textContent.trim();
    const small = [];
    for (const el of document.querySelectorAll(CONTROLS)) {
      if (!shown(el) || inSentence(el)) continue;
      const r = el.getBoundingClientRect();
      if (r.width + 0.01 < tap || r.height + 0.01 < tap)
        small.push(`${describe(el)} ${r.width.toFixed(1)}x${r.height.toFixed(1)}`);
    }
    return small;
  }

  function lowContrast() {
    const rgba = (c) => {
      const m = c.match(/rgba?\(([^)]+)\)/);
      if (!m) throw new Error("unparsed colour " + c);
      const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number);
      return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
    };
    const over = (top, below) => {  // top composited over an opaque colour
      const a = top[3];
      return [0, 1, 2].map((i) => top[i] * a + below[i] * (1 - a)).concat(1);
    };
    // The colour behind el: its own background and its ancestors', composited down to the first
    // opaque one (the canvas, white, if none is).
    const background = (el) => {
      const layers = [];
      for (let e = el; e; e = e.parentElement) {
        const c = rgba(getComputedStyle(e).backgroundColor);
        if (c[3] > 0) layers.push(c);
        if (c[3] >= 1) break;
      }
      let colour = [255, 255, 255, 1];
      for (const layer of layers.reverse()) colour = over(layer, colour);
      return colour;
    };
    const luminance = (c) => {
      const [r, g, b] = c.slice(0, 3).map((v) => {
        v /= 255;
        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
      });
      return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const ratio = (a, b) => {
      const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
      return (hi + 0.05) / (lo + 0.05);
    };
    const large = (style) => {
      const px = parseFloat(style.fontSize);
      return px >= 24 || (px >= 18.66 && parseInt(style.fontWeight) >= 700);
    };
    const low = [];
    const check = (el, what, fg, bg, least) => {
      const r = ratio(over(fg, bg), bg);
      if (r < least) low.push(`${describe(el)} ${what} ${r.toFixed(2)} < ${least}`);
    };
    for (const el of document.querySelectorAll("body *")) {
      if (!shown(el)) continue;
      const style = getComputedStyle(el);
      const field = el.matches("input, textarea, select");
      const hasText = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (hasText || (field && el.value)) {
        check(el, "text", rgba(style.color), background(el), large(style) ? 3 : 4.5);
      }
      if (field && el.placeholder && !el.value) {
        check(el, "placeholder", rgba(getComputedStyle(el, "::placeholder").color), background(el), 4.5);
      }
      if (el.matches(CONTROLS) && el.tagName !== "A") {
        // A control's boundary (WCAG 1.4.11): its border, else its fill, against what is around it.
        const border = rgba(style.borderTopColor);
        const fill = rgba(style.backgroundColor);
        const edge = parseFloat(style.borderTopWidth) > 0 && border[3] > 0 ? border
          : fill[3] > 0 ? fill : null;
        if (edge) check(el, "boundary", edge, background(el.parentElement), 3);
      }
    }
    return low;
  }

  return { smallTargets, lowContrast };
})()
