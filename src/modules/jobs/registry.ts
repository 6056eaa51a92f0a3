import { z } from "zod";
import { billingRunJob } from "../billing/scheduler.js";
import { quotaEmailJob, thresholdNotifyJob, upgradeReminderJob } from "../metering/notify.js";
import { purgeExpiredUsage } from "../metering/retention.js";
import { webhookDisabledEmailJob, webhookDispatchJob, webhookSweepJob } from "../webhooks/dispatch.js";
import { defineJob, type Job, type Schedule } from "./define.js";
import { emailDeliverJob, emailSweepJob } from "./email-job.js";

/** Raw usage events past their plan's retention are purged hourly (docs/metering.md#data-retention). */
export const retentionJob = defineJob({
  name: "usage.retention",
  schema: z.object({}).strict(),
  attempts: 1,
  run: async (deps) => {
    await purgeExpiredUsage(deps, deps.clock.now());
  },
});

/** Every job a worker can run. A job missing here is never run (and waits for a process that knows it). */
// biome-ignore lint/suspicious/noExplicitAny: one list holds jobs of every payload type; each validates its own.
export const JOBS: Job<any>[] = [
  emailDeliverJob,
  emailSweepJob,
  billingRunJob,
  thresholdNotifyJob,
  quotaEmailJob,
  upgradeReminderJob,
  webhookDispatchJob,
  webhookSweepJob,
  webhookDisabledEmailJob,
  retentionJob,
];

/** What runs on a timer, and how often. */
export const SCHEDULES: Schedule[] = [
  { job: billingRunJob, everyMs: 60_000 },
  { job: thresholdNotifyJob, everyMs: 10_000 },
  { job: webhookSweepJob, everyMs: 15_000 },
  { job: emailSweepJob, everyMs: 5 * 60_000 },
  { job: retentionJob, everyMs: 60 * 60_000 },
];
