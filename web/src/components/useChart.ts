import { type RefObject, useEffect } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

/**
 * Draws a uPlot chart into `box` while the component is mounted, sized to the box's width and
 * redrawn when it resizes; `options` without width (taken from the box) and with the height.
 */
export function useChart(
  box: RefObject<HTMLDivElement | null>,
  build: () => { options: Omit<uPlot.Options, "width">; data: uPlot.AlignedData } | null,
  deps: unknown[],
): void {
  useEffect(
    () => {
      const element = box.current;
      const spec = build();
      if (!element || !spec) return;
      const chart = new uPlot({ ...spec.options, width: element.clientWidth || 320 }, spec.data, element);
      const resize = new ResizeObserver(() =>
        chart.setSize({ width: element.clientWidth, height: spec.options.height }),
      );
      resize.observe(element);
      return () => {
        resize.disconnect();
        chart.destroy();
      };
    },
    // biome-ignore lint/correctness/useExhaustiveDependencies: the caller lists what its chart depends on.
    deps,
  );
}
