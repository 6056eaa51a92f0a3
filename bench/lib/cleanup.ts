/**
 * Everything a benchmark creates (processes, databases, Redis keys) registers its own removal here;
 * it runs when the benchmark ends, fails, is interrupted, or overruns its time limit — a benchmark
 * always stops by itself and leaves nothing behind.
 */
const tasks: { name: string; run: () => Promise<void> }[] = [];
let cleaning: Promise<void> | undefined;

/** Registers a cleanup step; steps run in reverse order of registration. Returns an unregister function. */
export function onCleanup(name: string, run: () => Promise<void>): () => void {
  const task = { name, run };
  tasks.push(task);
  return () => {
    const i = tasks.indexOf(task);
    if (i >= 0) tasks.splice(i, 1);
  };
}

export function cleanupAll(): Promise<void> {
  cleaning ??= (async () => {
    while (tasks.length > 0) {
      const task = tasks.pop();
      if (!task) break;
      try {
        await task.run();
      } catch (error) {
        console.error(`cleanup "${task.name}" failed: ${(error as Error).message}`);
      }
    }
  })();
  return cleaning;
}

/** Runs a benchmark: cleans up on success, failure, Ctrl-C, SIGTERM and after `timeoutMinutes`. */
export async function runBenchmark(name: string, timeoutMinutes: number, body: () => Promise<void>) {
  const abort = async (why: string, code: number) => {
    console.error(`\n${name}: ${why}; cleaning up`);
    await cleanupAll();
    process.exit(code);
  };
  process.once("SIGINT", () => void abort("interrupted", 130));
  process.once("SIGTERM", () => void abort("terminated", 143));
  const watchdog = setTimeout(
    () => void abort(`did not finish within ${timeoutMinutes} min`, 1),
    timeoutMinutes * 60_000,
  );
  watchdog.unref();
  let code = 0;
  try {
    await body();
  } catch (error) {
    console.error(error);
    code = 1;
  } finally {
    await cleanupAll();
    clearTimeout(watchdog);
  }
  // autocannon and pg may leave timers behind; the benchmark is over.
  process.exit(code || Number(process.exitCode ?? 0));
}
