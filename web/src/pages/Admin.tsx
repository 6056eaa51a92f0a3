import { useEffect, useRef, useState } from "react";
import uPlot from "uplot";
import { Loading } from "../App";
import { api, problemMessage, type Schemas } from "../api/client";
import { DataTable } from "../components/DataTable";
import { useChart } from "../components/useChart";

type Metrics = Schemas["RevenueMetrics"];

const WINDOWS = [
  { days: 30, label: "Last 30 days" },
  { days: 90, label: "Last 90 days" },
  { days: 365, label: "Last 12 months" },
];

/** The operator's view: revenue metrics over a window, MRR as a chart (definitions in docs/dashboard.md). */
export function Admin() {
  const [days, setDays] = useState(30);
  const [metrics, setMetrics] = useState<Metrics | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    // A window chosen later wins: an earlier request still running is ignored when it answers.
    let current = true;
    setMetrics(null);
    setError(null);
    void api
      // The window ends at the server's now (its clock may be a test clock), not this browser's.
      .GET("/v1/admin/metrics", { params: { query: { days } } })
      .then(({ data, error }) => {
        if (!current) return;
        if (data) setMetrics(data);
        else setError(problemMessage(error));
      });
    return () => {
      current = false;
    };
  }, [days]);
  const percent = (value: number | null) => (value === null ? "—" : `${Math.round(value * 1000) / 10}%`);
  return (
    <>
      <h1>Revenue</h1>
      <label className="inline-label">
        Window{" "}
        <select value={days} onChange={(event) => setDays(Number(event.target.value))}>
          {WINDOWS.map((w) => (
            <option key={w.days} value={w.days}>
              {w.label}
            </option>
          ))}
        </select>
      </label>
      {error ? (
        <p className="error" role="alert">
          {error}
        </p>
      ) : !metrics ? (
        <Loading label="Loading metrics…" />
      ) : (
        <>
          <dl className="stats">
            <Stat label="MRR" value={`${metrics.currency} ${metrics.mrr}`} />
            <Stat label="ARR" value={`${metrics.currency} ${metrics.arr}`} />
            <Stat label="Active subscriptions" value={String(metrics.active_subscriptions)} />
            <Stat label="Churn" value={percent(metrics.churn_rate)} />
            <Stat label="Free-to-paid conversion" value={percent(metrics.conversion_rate)} />
            <Stat label="ARPU" value={metrics.arpu ? `${metrics.currency} ${metrics.arpu}` : "—"} />
            <Stat label="LTV" value={metrics.ltv ? `${metrics.currency} ${metrics.ltv}` : "—"} />
          </dl>
          <MrrChart metrics={metrics} />
          <h2>By plan</h2>
          {Object.keys(metrics.by_plan).length === 0 ? (
            <p>No paying subscriptions at the end of this window.</p>
          ) : (
            <DataTable
              label="Paying subscriptions by plan"
              rows={Object.entries(metrics.by_plan)}
              rowKey={([plan]) => plan}
              columns={[
                { header: "Plan", cell: ([plan]) => plan },
                { header: "Subscriptions", cell: ([, row]) => row.subscriptions },
                {
                  header: "MRR",
                  className: "num",
                  cell: ([, row]) => (
                    <>
                      {metrics.currency} {row.mrr}
                    </>
                  ),
                },
              ]}
            />
          )}
        </>
      )}
    </>
  );
}

function Stat({ label, value }: { label: string; value: string }) {
  return (
    <div className="stat">
      <dt>{label}</dt>
      <dd>{value}</dd>
    </div>
  );
}

function MrrChart({ metrics }: { metrics: Metrics }) {
  const box = useRef<HTMLDivElement>(null);
  useChart(
    box,
    () => ({
      data: [metrics.series.map((p) => Date.parse(p.at) / 1000), metrics.series.map((p) => Number(p.mrr))],
      options: {
        height: 200,
        legend: { show: false },
        scales: { y: { range: (_u, _min, max) => [0, Math.max(1, max)] } },
        series: [
          {},
          {
            label: "MRR",
            stroke: "#1a56db",
            width: 2,
            fill: "rgba(26, 86, 219, 0.12)",
            // MRR holds until the next change: a step, not a slope.
            paths: uPlot.paths.stepped?.({ align: 1 }),
          },
        ],
      },
    }),
    [metrics],
  );
  return (
    <figure className="chart panel">
      <div ref={box} aria-hidden="true" />
      <figcaption className="visually-hidden">
        <table>
          <caption>MRR over time</caption>
          <tbody>
            {metrics.series.map((p) => (
              <tr key={p.at}>
                <td>{p.at.slice(0, 10)}</td>
                <td>{p.mrr}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </figcaption>
    </figure>
  );
}
