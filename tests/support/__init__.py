"""What the tests and the benchmarks share: the Kubernetes emulator (`emulator`), the cluster and
operator around it (`cluster`), fleets of fake worker pods (`fleet`), a steady arrival of
documents (`documents`), the autoscaling simulation (`autoscaling_simulation`), the mocks with
docpipe's extractor (`mocks`), free ports (`ports`) and polling (`polling`). A package, never a
conftest, so that bench/ can import it."""
