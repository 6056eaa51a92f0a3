CREATE TABLE "coupons" (
	"id" text PRIMARY KEY NOT NULL,
	"code" text NOT NULL,
	"name" text,
	"type" text NOT NULL,
	"percent_off" numeric,
	"amount_off" numeric,
	"currency" text,
	"duration" text NOT NULL,
	"duration_periods" integer,
	"max_redemptions" integer,
	"redemptions" integer DEFAULT 0 NOT NULL,
	"redeem_by" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "coupons_code_unique" UNIQUE("code")
);
--> statement-breakpoint
CREATE TABLE "credit_grants" (
	"id" text PRIMARY KEY NOT NULL,
	"org_id" text NOT NULL,
	"amount" numeric NOT NULL,
	"currency" text NOT NULL,
	"source" text NOT NULL,
	"reason" text,
	"expires_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "credit_ledger" (
	"id" text PRIMARY KEY NOT NULL,
	"org_id" text NOT NULL,
	"grant_id" text NOT NULL,
	"invoice_id" text,
	"kind" text NOT NULL,
	"amount" numeric NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "invoice_discounts" (
	"invoice_id" text NOT NULL,
	"position" integer NOT NULL,
	"org_coupon_id" text NOT NULL,
	"code" text NOT NULL,
	"amount" numeric NOT NULL,
	CONSTRAINT "invoice_discounts_invoice_id_position_pk" PRIMARY KEY("invoice_id","position")
);
--> statement-breakpoint
CREATE TABLE "org_coupons" (
	"id" text PRIMARY KEY NOT NULL,
	"org_id" text NOT NULL,
	"coupon_id" text NOT NULL,
	"applied_at" timestamp with time zone NOT NULL,
	"periods_used" integer DEFAULT 0 NOT NULL,
	"ends_at" timestamp with time zone,
	"remaining_amount" numeric,
	"status" text NOT NULL
);
--> statement-breakpoint
ALTER TABLE "credit_grants" ADD CONSTRAINT "credit_grants_org_id_orgs_id_fk" FOREIGN KEY ("org_id") REFERENCES "public"."orgs"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "credit_ledger" ADD CONSTRAINT "credit_ledger_grant_id_credit_grants_id_fk" FOREIGN KEY ("grant_id") REFERENCES "public"."credit_grants"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "invoice_discounts" ADD CONSTRAINT "invoice_discounts_invoice_id_invoices_id_fk" FOREIGN KEY ("invoice_id") REFERENCES "public"."invoices"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "org_coupons" ADD CONSTRAINT "org_coupons_org_id_orgs_id_fk" FOREIGN KEY ("org_id") REFERENCES "public"."orgs"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "org_coupons" ADD CONSTRAINT "org_coupons_coupon_id_coupons_id_fk" FOREIGN KEY ("coupon_id") REFERENCES "public"."coupons"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "credit_grants_org_idx" ON "credit_grants" USING btree ("org_id");--> statement-breakpoint
CREATE INDEX "credit_ledger_grant_idx" ON "credit_ledger" USING btree ("grant_id");--> statement-breakpoint
CREATE INDEX "credit_ledger_org_idx" ON "credit_ledger" USING btree ("org_id","id");--> statement-breakpoint
CREATE UNIQUE INDEX "org_coupons_once_idx" ON "org_coupons" USING btree ("org_id","coupon_id");--> statement-breakpoint
CREATE INDEX "org_coupons_org_idx" ON "org_coupons" USING btree ("org_id","applied_at");--> statement-breakpoint
CREATE FUNCTION "tollgate_append_only"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'check_violation';
END
$$;
--> statement-breakpoint
CREATE TRIGGER "credit_ledger_append_only" BEFORE UPDATE OR DELETE ON "credit_ledger" FOR EACH ROW EXECUTE FUNCTION "tollgate_append_only"();
--> statement-breakpoint
CREATE TRIGGER "invoice_discounts_append_only" BEFORE UPDATE OR DELETE ON "invoice_discounts" FOR EACH ROW EXECUTE FUNCTION "tollgate_append_only"();
