extern "C" __global__ void $NAME($PARAMS) {
$GRID_WAIT
  const unsigned int n = 1u$TIMES_DIMS;
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    unsigned int rest = i;
$COORDS    (void)rest;
$INPUTS    $STORE
  }
}
