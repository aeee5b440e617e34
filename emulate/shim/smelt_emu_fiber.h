/* smelt's CUDA emulator: CUDA threads as fibers. Follows smelt_emu.h.
 *
 * Each CUDA thread of a launch runs on a fiber of its own, all on the runner's one OS thread:
 * a fiber runs until it waits at a barrier that has not opened (or ends its work), then hands
 * the CPU to the next fiber, in round-robin order, that can go on. A barrier is a user-space
 * switch per waiting thread, not a sleep and a wakeup in the kernel (one OS thread per CUDA
 * thread spent most of the emulator's time in futex calls and context switches). The
 * schedule is deterministic; when every fiber with work left waits at a barrier, none can
 * open: the run stops and names them (a GPU would hang).
 *
 * Fibers are kept from launch to launch; each loops over the jobs smelt_emu_pool_run gives
 * it. Switches are annotated for the sanitizers: AddressSanitizer learns each fiber's stack;
 * to ThreadSanitizer each fiber is a thread, a switch orders nothing (no_sync), and the
 * runner's setup of a launch is released to every job and every job's work to what follows
 * the launch, as creating and joining threads did. */
#pragma once
#include <functional>
#include <sys/mman.h>
/* A switch: a few instructions of assembly on x86-64, else (or with SMELT_EMU_UCONTEXT
   defined) swapcontext, which also saves the signal mask: a system call per switch. */
#if defined(__x86_64__) && !defined(SMELT_EMU_UCONTEXT)
#define SMELT_EMU_SWITCH_ASM 1
#else
#define SMELT_EMU_SWITCH_ASM 0
#include <ucontext.h>
#endif

struct smelt_emu_fiber {
  unsigned int id = 0;
  /* A job of this launch not yet finished. */
  bool busy = false;
  /* Not runnable while *wait_word holds wait_value (a barrier's phase). */
  const int* wait_word = nullptr;
  int wait_value = 0;
  /* The stack: its lowest byte and size (the runner's own: learned from AddressSanitizer). */
  const void* stack = nullptr;
  size_t stack_bytes = 0;
#if SMELT_EMU_SWITCH_ASM
  void* sp = nullptr;
#else
  ucontext_t context;
#endif
  void* asan_fake_stack = nullptr;
  void* tsan = nullptr;
  /* The CUDA thread it runs (the runner's is smelt_emu_runner_thread). */
  smelt_emu_thread thread;
};

/* 512 KiB a CUDA thread (pages are committed as touched), past a guard page. */
static constexpr size_t SMELT_EMU_STACK = 512 * 1024;
/* Fibers made so far (a plain array: the scheduler's reads stay out of ThreadSanitizer's view,
   which a container's member functions would not). */
static constexpr unsigned int SMELT_EMU_MAX_FIBERS = SMELT_EMU_GROUPS * 1024;
static smelt_emu_fiber* smelt_emu_fibers[SMELT_EMU_MAX_FIBERS];
static unsigned int smelt_emu_fiber_count;
/* The runner's own context. */
static smelt_emu_fiber smelt_emu_runner;
static smelt_emu_fiber* smelt_emu_running = &smelt_emu_runner;
static smelt_emu_fiber* smelt_emu_switched_from;
/* This launch's fibers (the first `smelt_emu_active`), how many are busy, and their job. */
static unsigned int smelt_emu_active, smelt_emu_busy;
static std::function<void(unsigned int)> smelt_emu_job;

#if SMELT_EMU_SWITCH_ASM
/* Saves the callee-saved registers on the running stack and its pointer in *from, then
   restores `to`'s: a switch is a call that returns on another stack. */
extern "C" void smelt_emu_switch_stack(void** from, void* to);
asm(R"(
  .pushsection .text
  .globl smelt_emu_switch_stack
  .type smelt_emu_switch_stack, @function
smelt_emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size smelt_emu_switch_stack, .-smelt_emu_switch_stack
  .popsection
)");
#endif

/* The running fiber's switch is complete (AddressSanitizer's bookkeeping: the stack it came
   from, the runner's learned here, is inactive). */
SMELT_EMU_NO_TSAN static void smelt_emu_finish_switch(void* fake_stack) {
#if SMELT_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, &smelt_emu_switched_from->stack, &smelt_emu_switched_from->stack_bytes);
#else
  (void)fake_stack;
#endif
}

SMELT_EMU_NO_TSAN static void smelt_emu_switch_to(smelt_emu_fiber* to) {
  smelt_emu_fiber* from = smelt_emu_running;
  smelt_emu_switched_from = from, smelt_emu_running = to;
  smelt_emu_running_thread = to == &smelt_emu_runner ? &smelt_emu_runner_thread : &to->thread;
#if SMELT_EMU_ASAN
  __sanitizer_start_switch_fiber(&from->asan_fake_stack, to->stack, to->stack_bytes);
#endif
#if SMELT_EMU_TSAN
  __tsan_switch_to_fiber(to->tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if SMELT_EMU_SWITCH_ASM
  smelt_emu_switch_stack(&from->sp, to->sp);
#else
  swapcontext(&from->context, &to->context);
#endif
  smelt_emu_finish_switch(from->asan_fake_stack);
}

static void smelt_emu_deadlock();
/* Hands the CPU to the next fiber, after the running one, that has work and is not waiting;
   to the runner once no fiber has work. Returns when the running fiber is chosen again. */
SMELT_EMU_NO_TSAN static void smelt_emu_yield() {
  const unsigned int n = smelt_emu_active, self = smelt_emu_running->id;
  for (unsigned int k = 1; k <= n; k++) {
    smelt_emu_fiber* f = smelt_emu_fibers[(self + k) % n];
    if (f->busy && (!f->wait_word || *f->wait_word != f->wait_value)) {
      if (f != smelt_emu_running) smelt_emu_switch_to(f);
      return;
    }
  }
  if (smelt_emu_busy) smelt_emu_deadlock();
  smelt_emu_switch_to(&smelt_emu_runner);
}

SMELT_EMU_NO_TSAN static void smelt_emu_block_on(const int* word, int value) {
  smelt_emu_fiber* self = smelt_emu_running;
  if (self == &smelt_emu_runner) smelt_emu_fail("a barrier outside a launch");
  self->wait_word = word, self->wait_value = value;
  smelt_emu_yield();
  self->wait_word = nullptr;
}

SMELT_EMU_NO_TSAN static void smelt_emu_deadlock() {
  unsigned int waiting = 0;
  fprintf(stderr, "smelt-emu: deadlock: every CUDA thread with work left waits at a barrier the others will not reach:");
  for (unsigned int i = 0; i < smelt_emu_active; i++) {
    const smelt_emu_fiber& f = *smelt_emu_fibers[i];
    if (!f.busy) continue;
    if (waiting++ < 16) fprintf(stderr, " b%u.t%u", f.thread.block_idx.x, f.thread.thread_idx.x);
  }
  fprintf(stderr, "%s (%u threads)\n", waiting > 16 ? " ..." : "", waiting);
  fflush(stderr);
  abort();
}

/* A fiber's life: each job of each launch it takes part in, then back to the scheduler. */
[[noreturn]] SMELT_EMU_NO_TSAN static void smelt_emu_fiber_main() {
  smelt_emu_finish_switch(nullptr);
  for (;;) {
    smelt_emu_fiber* self = smelt_emu_running;
#if SMELT_EMU_TSAN
    __tsan_acquire(&smelt_emu_job);
#endif
    smelt_emu_job(self->id);
#if SMELT_EMU_TSAN
    __tsan_release(&smelt_emu_busy);
#endif
    self->busy = false, smelt_emu_busy--;
    smelt_emu_yield();
  }
}

SMELT_EMU_NO_TSAN static smelt_emu_fiber* smelt_emu_new_fiber(unsigned int id) {
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  void* base = mmap(nullptr, SMELT_EMU_STACK + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED || mprotect(base, page, PROT_NONE) != 0) smelt_emu_fail("cannot map a fiber's stack");
  auto f = std::make_unique<smelt_emu_fiber>();
  f->id = id, f->stack = (unsigned char*)base + page, f->stack_bytes = SMELT_EMU_STACK;
#if SMELT_EMU_SWITCH_ASM
  /* As smelt_emu_switch_stack leaves a stack: six registers, then the address it returns to,
     smelt_emu_fiber_main, entered as if called (its return address slot 16-byte aligned + 8). */
  void** top = (void**)((unsigned char*)f->stack + SMELT_EMU_STACK);
  *--top = nullptr;
  *--top = (void*)&smelt_emu_fiber_main;
  for (int r = 0; r < 6; r++) *--top = nullptr;
  f->sp = top;
#else
  if (getcontext(&f->context) != 0) smelt_emu_fail("getcontext");
  f->context.uc_stack.ss_sp = (void*)f->stack, f->context.uc_stack.ss_size = SMELT_EMU_STACK;
  f->context.uc_link = nullptr;
  makecontext(&f->context, (void (*)())smelt_emu_fiber_main, 0);
#endif
#if SMELT_EMU_TSAN
  f->tsan = __tsan_create_fiber(0);
#endif
  return f.release();
}

/* Runs job(i) for i < n, each on a fiber, and returns when all have. */
SMELT_EMU_NO_TSAN static void smelt_emu_pool_run(unsigned int n, std::function<void(unsigned int)> job) {
  if (n == 0) return;
#if SMELT_EMU_TSAN
  if (!smelt_emu_runner.tsan) smelt_emu_runner.tsan = __tsan_get_current_fiber();
#endif
  if (n > SMELT_EMU_MAX_FIBERS) smelt_emu_fail("more threads than SMELT_EMU_GROUPS blocks of 1024");
  for (; smelt_emu_fiber_count < n; smelt_emu_fiber_count++)
    smelt_emu_fibers[smelt_emu_fiber_count] = smelt_emu_new_fiber(smelt_emu_fiber_count);
  smelt_emu_job = std::move(job);
  for (unsigned int i = 0; i < n; i++) smelt_emu_fibers[i]->busy = true, smelt_emu_fibers[i]->wait_word = nullptr;
  smelt_emu_active = n, smelt_emu_busy = n;
#if SMELT_EMU_TSAN
  __tsan_release(&smelt_emu_job);
#endif
  smelt_emu_switch_to(smelt_emu_fibers[0]);
#if SMELT_EMU_TSAN
  __tsan_acquire(&smelt_emu_busy);
#endif
}

/* Names the running fiber's CUDA thread in ThreadSanitizer's reports. */
SMELT_EMU_NO_TSAN static void smelt_emu_name_thread(const char* name) {
#if SMELT_EMU_TSAN
  __tsan_set_fiber_name(smelt_emu_running->tsan, name);
#else
  (void)name;
#endif
}

#if SMELT_EMU_ASAN
/* AddressSanitizer's reports say "thread T0" (every fiber is on it): name the CUDA thread. */
extern "C" void __asan_on_error() {
  if (smelt_emu_running != &smelt_emu_runner)
    fprintf(stderr, "smelt-emu: the access below is CUDA thread b%u.t%u's\n", blockIdx.x, threadIdx.x);
}
#endif
