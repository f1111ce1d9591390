// A Beam resources detector that stages nothing: the cluster already has Beam's jars in
// its lib/ (see pipelines/local/job_server.py). Beam's job server otherwise ships every jar
// on its own classpath with each job (151 MB for Flink, 260 MB for Spark), and Flink then
// loads Beam from the job's classloader, which makes Beam stop the SDK harnesses after
// every stage. No Beam artifact offers this; it is one class, compiled at `facebeam flink|spark up`.
package dev.facebeam.beam;

import java.util.Collections;
import org.apache.beam.sdk.util.construction.resources.PipelineResourcesDetector;

public final class ClusterLibResources implements PipelineResourcesDetector.Factory {
  /** Called by Beam's InstanceBuilder (--pipelineResourcesDetectorFactoryClass). */
  public static ClusterLibResources create() {
    return new ClusterLibResources();
  }

  @Override
  public PipelineResourcesDetector getPipelineResourcesDetector() {
    return classLoader -> Collections.emptyList();
  }
}
