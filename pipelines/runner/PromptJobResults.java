// A -javaagent for the local Flink cluster's Beam job server (pipelines/local/job_server.py): the
// job server learns that a Flink job has ended within 250 ms, not up to 2 s later. Flink's
// RestClusterClient polls a job's result with a fixed ExponentialWaitStrategy(10 ms, 2000 ms),
// built in its constructor with no option to change it, so a job's launcher waited 0-2 s (1.1 s
// measured) after Flink had finished the job: a toll on every nightly job, and noise in every
// benchmark of short jobs. Each poll costs the JobManager about 3.5 ms of CPU (measured), which
// a busy 2-core machine takes from the job: 250 ms balances that against the wait.
package dev.facebeam.beam;

import java.lang.instrument.Instrumentation;
import net.bytebuddy.agent.builder.AgentBuilder;
import net.bytebuddy.asm.Advice;
import net.bytebuddy.description.type.TypeDescription;
import net.bytebuddy.dynamic.DynamicType;
import net.bytebuddy.matcher.ElementMatchers;
import net.bytebuddy.utility.JavaModule;

public final class PromptJobResults {
  /** The longest wait between two polls of a job's result, in milliseconds. */
  public static final long MAX_WAIT_MS = 250L;

  private static final String STRATEGY = "org.apache.flink.client.program.rest.retry.ExponentialWaitStrategy";

  private PromptJobResults() {}

  public static void premain(String args, Instrumentation inst) {
    new AgentBuilder.Default()
        .with(new AgentBuilder.Listener.Adapter() {
          @Override
          public void onTransformation(TypeDescription type, ClassLoader loader, JavaModule module,
              boolean loaded, DynamicType dynamicType) {
            System.err.println("facebeam PromptJobResults agent: capped " + type.getName());
          }
        })
        .type(ElementMatchers.named(STRATEGY))
        .transform((builder, type, loader, module, domain) -> builder.visit(
            Advice.to(Cap.class).on(ElementMatchers.named("sleepTime"))))
        .installOn(inst);
    System.err.println("facebeam PromptJobResults agent: Flink job results polled every "
        + MAX_WAIT_MS + " ms at most");
  }

  /** Inlined at the end of ExponentialWaitStrategy.sleepTime(long attempt). */
  public static final class Cap {
    private Cap() {}

    @Advice.OnMethodExit
    public static void exit(@Advice.Return(readOnly = false) long waitMs) {
      waitMs = Math.min(waitMs, MAX_WAIT_MS);
    }
  }
}
