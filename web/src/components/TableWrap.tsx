/**
 * A table's own scrolling box: on a narrow screen a wide table scrolls sideways inside it, not the
 * page. A keyboard user scrolls it with the arrow keys, so it takes the focus (WCAG 2.1.1; axe's
 * scrollable-region-focusable), and it is a region named like the table, so a screen reader says
 * what was focused.
 */
export function TableWrap({ label, children }: { label: string; children: React.ReactNode }) {
  return (
    // A named section is a region landmark.
    // biome-ignore lint/a11y/noNoninteractiveTabindex: a scrolling box must be reachable by keyboard to scroll it.
    <section className="table-wrap" aria-label={label} tabIndex={0}>
      {children}
    </section>
  );
}
