ALTER TABLE "credit_notes" ADD COLUMN "idempotency_key" text;--> statement-breakpoint
ALTER TABLE "usage_events" ADD COLUMN "batch_position" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
CREATE UNIQUE INDEX "credit_notes_idempotency_idx" ON "credit_notes" USING btree ("org_id","idempotency_key");