// A -javaagent for the local clusters' JVMs (pipelines/local/job_server.py): every server that
// Beam's vendored Netty binds to the wildcard address binds to loopback instead. Beam's
// ServerFactory uses NettyServerBuilder.forPort (every interface) for the job server's job and
// artifact ports and for the fn-API servers that TaskManagers and executors open for SDK
// harnesses; no Beam, Flink, Spark or JDK option changes that (--job-host only changes the
// advertised URL), and the fn-API factory is fixed inside DefaultJobBundleFactory.
package dev.facebeam.beam;

import java.lang.instrument.Instrumentation;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import net.bytebuddy.agent.builder.AgentBuilder;
import net.bytebuddy.asm.Advice;
import net.bytebuddy.matcher.ElementMatchers;

public final class LoopbackServers {
  private LoopbackServers() {}

  public static void premain(String args, Instrumentation inst) {
    new AgentBuilder.Default()
        .type(ElementMatchers.nameStartsWith("org.apache.beam.")
            .and(ElementMatchers.nameEndsWith(".io.netty.bootstrap.AbstractBootstrap")))
        .transform((builder, type, loader, module, domain) -> builder.visit(
            Advice.to(Bind.class).on(ElementMatchers.named("bind")
                .and(ElementMatchers.takesArguments(SocketAddress.class)))))
        .installOn(inst);
    System.err.println("facebeam LoopbackServers agent: Beam's Netty servers bind to loopback");
  }

  /** Inlined at the start of AbstractBootstrap.bind(SocketAddress), which all bind overloads call. */
  public static final class Bind {
    private Bind() {}

    @Advice.OnMethodEnter
    public static void enter(@Advice.Argument(value = 0, readOnly = false) SocketAddress address) {
      if (address instanceof InetSocketAddress) {
        InetSocketAddress inet = (InetSocketAddress) address;
        if (inet.getAddress() != null && inet.getAddress().isAnyLocalAddress()) {
          address = new InetSocketAddress(InetAddress.getLoopbackAddress(), inet.getPort());
        }
      }
    }
  }
}
