CREATE TABLE "subscription_history" (
	"id" text PRIMARY KEY NOT NULL,
	"subscription_id" text NOT NULL,
	"org_id" text NOT NULL,
	"at" timestamp with time zone NOT NULL,
	"plan_key" text NOT NULL,
	"plan_version" integer NOT NULL,
	"interval" text NOT NULL,
	"status" text NOT NULL,
	"mrr" numeric NOT NULL,
	"currency" text NOT NULL
);
--> statement-breakpoint
CREATE INDEX "subscription_history_org_idx" ON "subscription_history" USING btree ("org_id","at");--> statement-breakpoint
CREATE INDEX "subscription_history_at_idx" ON "subscription_history" USING btree ("at");--> statement-breakpoint
-- Subscriptions as they are now, from their last change: the history starts here for existing data.
-- The currency is the catalog's, which plan versions do not record; 'USD' until the next change
-- writes the real one (metrics sum MRR in the catalog's currency).
INSERT INTO "subscription_history" ("id", "subscription_id", "org_id", "at", "plan_key", "plan_version", "interval", "status", "mrr", "currency")
SELECT 'shs_backfill_' || s."id", s."id", s."org_id", s."updated_at", s."plan_key", s."plan_version", s."interval", s."status",
  COALESCE(CASE WHEN s."interval" = 'year' THEN (v."definition"->'price'->>'year')::numeric / 12
                ELSE (v."definition"->'price'->>'month')::numeric END, 0),
  'USD'
FROM "subscriptions" s
LEFT JOIN "plan_versions" v ON v."plan_key" = s."plan_key" AND v."version" = s."plan_version";
