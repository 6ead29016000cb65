/*
 * ub_config_lock.so - preloaded into OpenDKIM by up.sh.
 *
 * OpenDKIM (Debian's 2.11.0~beta2) creates a libunbound context for every
 * message (its VBR support, compiled in) and loads our ResolverConfiguration
 * into it with ub_ctx_config(). That function parses with a flex lexer and
 * a bison parser whose state is global, so two messages at the same moment
 * corrupt each other's parse: under parallel submissions the filter
 * segfaults or answers "can't set VBR resolver configuration" /
 * "BIO_new_mem_buf() failed", and Postfix then answers every message with
 * 451 4.7.1 "Service unavailable - try again later".
 * Upstream's report and fix: trusteddomainproject/OpenDKIM issue 14 (a
 * mutex around the call). This is that mutex, from outside.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

struct ub_ctx;
typedef int (*ub_ctx_config_fn)(struct ub_ctx *, const char *);

static pthread_mutex_t config_lock = PTHREAD_MUTEX_INITIALIZER;

int ub_ctx_config(struct ub_ctx *ctx, const char *fname)
{
	static ub_ctx_config_fn real;
	int status = -1; /* UB_NOMEM: the real one could not be found */

	pthread_mutex_lock(&config_lock);
	if (real == NULL)
		real = (ub_ctx_config_fn) dlsym(RTLD_NEXT, "ub_ctx_config");
	if (real != NULL)
		status = real(ctx, fname);
	pthread_mutex_unlock(&config_lock);
	return status;
}
