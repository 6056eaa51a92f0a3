import { Link } from "wouter";

export function NotFound() {
  return (
    <main className="narrow">
      <h1>Page not found</h1>
      <p>
        There is nothing at this address. <Link href="~/dashboard">Go to the dashboard</Link>.
      </p>
    </main>
  );
}
