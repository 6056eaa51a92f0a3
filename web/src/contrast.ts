/** WCAG 2's contrast, for the org's white-label colour: any colour an org picks stays readable. */

const rgbOf = (hex: string): [number, number, number] => [
  Number.parseInt(hex.slice(1, 3), 16),
  Number.parseInt(hex.slice(3, 5), 16),
  Number.parseInt(hex.slice(5, 7), 16),
];

/** WCAG 2 relative luminance of an sRGB colour (0–255 channels). */
function luminance([r, g, b]: [number, number, number]): number {
  const linear = (channel: number) => {
    const c = channel / 255;
    return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
}

/** The contrast ratio of two #rrggbb colours, 1 to 21. */
export function contrast(a: string, b: string): number {
  const [x, y] = [luminance(rgbOf(a)), luminance(rgbOf(b))];
  return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05);
}

/**
 * `brand` (#rrggbb), darkened just enough to be read as text on the page's background and to carry
 * white text (4.5:1, WCAG AA); a colour that already is comes back as it is. The page's background
 * (#f6f7f9) is darker than white, so text on either and white text on the result all pass.
 */
export function readableBrand(brand: string, background = "#f6f7f9"): string {
  if (!/^#[0-9a-f]{6}$/i.test(brand)) return brand;
  let rgb = rgbOf(brand);
  const hex = () => `#${rgb.map((c) => Math.round(c).toString(16).padStart(2, "0")).join("")}`;
  // 5% darker a step: at most some 60 steps from white to black.
  while (contrast(hex(), background) < 4.5) rgb = rgb.map((c) => c * 0.95) as typeof rgb;
  return hex();
}
