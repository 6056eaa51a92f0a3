import { useEffect, useRef, useState } from "react";
import uPlot from "uplot";
import { api } from "../api/client";
import { useChart } from "./useChart";

interface Point {
  start: string;
  value: number;
}

/**
 * A meter's usage per day over the current period: a uPlot bar chart, with the same numbers as a
 * table for screen readers (and anyone who prefers numbers).
 */
export function UsageChart({
  orgId,
  meter,
  name,
  from,
  to,
}: {
  orgId: string;
  meter: string;
  name: string;
  /** The period shown: its start (the series' first bucket) and end (the axis's end). */
  from: string;
  to: string;
}) {
  const [points, setPoints] = useState<Point[] | null>(null);
  const [failed, setFailed] = useState(false);
  const box = useRef<HTMLDivElement>(null);

  useEffect(() => {
    let cancelled = false;
    void api
      .GET("/v1/orgs/{org}/usage", {
        params: { path: { org: orgId }, query: { meter, from, granularity: "day" } },
      })
      .then(({ data }) => {
        if (cancelled) return;
        if (!data) return setFailed(true);
        setPoints(data.series.map((p) => ({ start: p.start, value: Number(p.value) })));
      });
    return () => {
      cancelled = true;
    };
  }, [orgId, meter, from]);

  useChart(
    box,
    () =>
      points && points.length > 0
        ? {
            data: [points.map((p) => Date.parse(p.start) / 1000), points.map((p) => p.value)],
            options: {
              height: 160,
              legend: { show: false },
              cursor: { show: true, y: false },
              axes: [{ grid: { show: false } }, { size: 40 }],
              scales: {
                // The whole period, whatever has been used so far (one day of data would span years).
                x: { time: true, range: () => [Date.parse(from) / 1000, Date.parse(to) / 1000] },
                y: { range: (_u, _min, max) => [0, Math.max(1, max)] },
              },
              series: [
                {},
                {
                  label: name,
                  stroke: "#1a56db",
                  fill: "rgba(26, 86, 219, 0.35)",
                  paths: uPlot.paths.bars?.({ size: [0.6, 40] }),
                },
              ],
            },
          }
        : null,
    [points, name, from, to],
  );

  if (failed) return <p className="muted">Usage over time could not be loaded.</p>;
  if (!points) return <p className="muted">Loading usage over time…</p>;
  if (points.length === 0) return <p className="muted">No usage yet this period.</p>;
  return (
    <figure className="chart">
      <div ref={box} aria-hidden="true" />
      <figcaption className="visually-hidden">
        <table>
          <caption>{name} per day</caption>
          <thead>
            <tr>
              <th scope="col">Day</th>
              <th scope="col">Usage</th>
            </tr>
          </thead>
          <tbody>
            {points.map((p) => (
              <tr key={p.start}>
                <td>{p.start.slice(0, 10)}</td>
                <td>{p.value}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </figcaption>
    </figure>
  );
}
