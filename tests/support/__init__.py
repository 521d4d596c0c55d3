"""What the tests and the benchmarks share: the Kubernetes emulator, fleets of fake worker pods,
the mocks with docpipe's extractor, free ports. A package, never a conftest, so that bench/ can
import it."""
