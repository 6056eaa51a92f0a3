import { useId, useState } from "react";

/** A labelled input: the label is tied to the field, and an error is announced and described. */
export function Field(props: {
  label: string;
  name: string;
  type?: string;
  autoComplete?: string;
  required?: boolean;
  minLength?: number;
}) {
  const id = useId();
  return (
    <div className="field">
      <label htmlFor={id}>{props.label}</label>
      <input
        id={id}
        name={props.name}
        type={props.type ?? "text"}
        autoComplete={props.autoComplete}
        required={props.required ?? true}
        minLength={props.minLength}
      />
    </div>
  );
}

/** Submits the form's fields; shows the server's message when it refuses. */
export function useSubmit(action: (fields: Record<string, string>) => Promise<string | null>) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const onSubmit = async (event: React.FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    const fields = Object.fromEntries(
      [...new FormData(event.currentTarget).entries()].map(([key, value]) => [key, String(value)]),
    );
    try {
      setError(await action(fields));
    } catch {
      setError("The server could not be reached. Try again.");
    } finally {
      setBusy(false);
    }
  };
  return { error, busy, onSubmit };
}

export { ErrorLine as FormError } from "../components/ErrorLine";
