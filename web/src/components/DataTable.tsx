import type { ReactNode } from "react";
import { TableWrap } from "./TableWrap";

/** One column of a {@link DataTable}. */
export interface Column<Row> {
  /** The column's header, also its name for screen readers. */
  header: string;
  /** The header is read by screen readers but not shown (a column of buttons, say). */
  hideHeader?: boolean;
  /** The cell's class: `num` for figures (right-aligned), `actions` for buttons. */
  className?: string;
  cell: (row: Row) => ReactNode;
}

/**
 * A list as a table: a scrollable, keyboard-reachable region named `label`, a caption for screen
 * readers, one header per column and one row per item — the dashboard's lists all look and read the
 * same way.
 */
export function DataTable<Row>({
  label,
  columns,
  rows,
  rowKey,
}: {
  label: string;
  columns: Column<Row>[];
  rows: readonly Row[];
  rowKey: (row: Row) => string;
}) {
  return (
    <TableWrap label={label}>
      <table className="table">
        <caption className="visually-hidden">{label}</caption>
        <thead>
          <tr>
            {columns.map((column) => (
              <th scope="col" key={column.header}>
                {column.hideHeader ? <span className="visually-hidden">{column.header}</span> : column.header}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map((row) => (
            <tr key={rowKey(row)}>
              {columns.map((column) => (
                <td key={column.header} className={column.className}>
                  {column.cell(row)}
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </TableWrap>
  );
}
