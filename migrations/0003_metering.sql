CREATE TABLE "allocations" (
	"org_id" text NOT NULL,
	"feature" text NOT NULL,
	"value" bigint NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "allocations_org_id_feature_pk" PRIMARY KEY("org_id","feature")
);
--> statement-breakpoint
CREATE TABLE "check_idempotency" (
	"org_id" text NOT NULL,
	"key" text NOT NULL,
	"fingerprint" text NOT NULL,
	"response" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "check_idempotency_org_id_key_pk" PRIMARY KEY("org_id","key")
);
--> statement-breakpoint
CREATE TABLE "plan_versions" (
	"plan_key" text NOT NULL,
	"version" integer NOT NULL,
	"hash" text NOT NULL,
	"definition" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "plan_versions_plan_key_version_pk" PRIMARY KEY("plan_key","version")
);
--> statement-breakpoint
CREATE TABLE "subscriptions" (
	"id" text PRIMARY KEY NOT NULL,
	"org_id" text NOT NULL,
	"plan_key" text NOT NULL,
	"plan_version" integer NOT NULL,
	"interval" text NOT NULL,
	"status" text NOT NULL,
	"anchor_at" timestamp with time zone NOT NULL,
	"trial_ends_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "threshold_events" (
	"id" text PRIMARY KEY NOT NULL,
	"org_id" text NOT NULL,
	"feature" text NOT NULL,
	"period_start" timestamp with time zone NOT NULL,
	"threshold" integer NOT NULL,
	"limit" numeric NOT NULL,
	"quantity" numeric NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "usage_events" (
	"org_id" text NOT NULL,
	"event_id" text NOT NULL,
	"meter" text NOT NULL,
	"timestamp" timestamp with time zone NOT NULL,
	"value" numeric NOT NULL,
	"properties" jsonb NOT NULL,
	"period_start" timestamp with time zone NOT NULL,
	"received_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "usage_events_org_id_event_id_pk" PRIMARY KEY("org_id","event_id")
);
--> statement-breakpoint
CREATE TABLE "usage_periods" (
	"org_id" text NOT NULL,
	"meter" text NOT NULL,
	"period_start" timestamp with time zone NOT NULL,
	"quantity" numeric NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "usage_periods_org_id_meter_period_start_pk" PRIMARY KEY("org_id","meter","period_start")
);
--> statement-breakpoint
CREATE TABLE "usage_rollups" (
	"org_id" text NOT NULL,
	"meter" text NOT NULL,
	"period_start" timestamp with time zone NOT NULL,
	"bucket" timestamp with time zone NOT NULL,
	"count" numeric NOT NULL,
	"sum" numeric NOT NULL,
	"min" numeric,
	"max" numeric,
	"latest_at" timestamp with time zone,
	"latest_value" numeric,
	"sum_value_time" numeric NOT NULL,
	CONSTRAINT "usage_rollups_org_id_meter_period_start_bucket_pk" PRIMARY KEY("org_id","meter","period_start","bucket")
);
--> statement-breakpoint
CREATE TABLE "usage_uniques" (
	"org_id" text NOT NULL,
	"meter" text NOT NULL,
	"period_start" timestamp with time zone NOT NULL,
	"value" text NOT NULL,
	"first_seen_at" timestamp with time zone NOT NULL,
	CONSTRAINT "usage_uniques_org_id_meter_period_start_value_pk" PRIMARY KEY("org_id","meter","period_start","value")
);
--> statement-breakpoint
ALTER TABLE "subscriptions" ADD CONSTRAINT "subscriptions_org_id_orgs_id_fk" FOREIGN KEY ("org_id") REFERENCES "public"."orgs"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "check_idempotency_created_idx" ON "check_idempotency" USING btree ("created_at");--> statement-breakpoint
CREATE UNIQUE INDEX "plan_versions_hash_idx" ON "plan_versions" USING btree ("plan_key","hash");--> statement-breakpoint
CREATE UNIQUE INDEX "subscriptions_org_idx" ON "subscriptions" USING btree ("org_id");--> statement-breakpoint
CREATE INDEX "subscriptions_plan_idx" ON "subscriptions" USING btree ("plan_key","plan_version");--> statement-breakpoint
CREATE UNIQUE INDEX "threshold_events_once_idx" ON "threshold_events" USING btree ("org_id","feature","period_start","threshold");--> statement-breakpoint
CREATE INDEX "threshold_events_created_idx" ON "threshold_events" USING btree ("created_at");--> statement-breakpoint
CREATE INDEX "usage_events_meter_idx" ON "usage_events" USING btree ("org_id","meter","timestamp");