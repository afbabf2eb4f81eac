/* AES-128-CBC decryption with the CPU's AES instructions (AES-NI), for _hit.c's cached reads.
 *
 * A Fernet token's ciphertext is AES-128-CBC. _hit.c used to open it through cryptography's
 * CipherContext.update: a Python method call into Rust, then OpenSSL's EVP dispatch. In-process
 * that is ~0.7 µs a read, but where the agent's CPU sleeps between requests (a worker on
 * another core) it measured ~2.5 µs: each wake-up finds that long path cold. The
 * instructions themselves are a few dozen; this runs them directly, on the key schedule built
 * once per cache (aes_expand), with nothing to dispatch.
 *
 * The instructions run in constant time (no table lookups: what makes software AES leak
 * through the cache). Only x86-64 built with GCC or Clang, on a CPU that has them
 * (aes_available), takes this path; anything else keeps the CipherContext.
 * tests/agent/server/test_hit.py runs the twins' contract both ways.
 */
#ifndef SECRETS_AGENT_AES_H
#define SECRETS_AGENT_AES_H

#include <stddef.h>
#include <string.h>

#define AES_ROUNDS 10 /* AES-128 */

/* The decryption key schedule: the equivalent inverse cipher's round keys. */
typedef struct {
    unsigned char round[AES_ROUNDS + 1][16];
} AesKeys;

/* Overwritten in a way the compiler may not drop as a dead store (key schedules, plaintext). */
static void
aes_wipe(void *data, size_t size)
{
    volatile unsigned char *p = (volatile unsigned char *)data;
    while (size--)
        *p++ = 0;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define AES_TARGET __attribute__((target("aes,sse2")))

static int
aes_available(void)
{
    return __builtin_cpu_supports("aes");
}

AES_TARGET static __m128i
aes_next(__m128i key, __m128i assist)
{
    /* FIPS-197's expansion of one AES-128 round key from the previous one */
    assist = _mm_shuffle_epi32(assist, 0xff);
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, assist);
}

/* ``keys`` for decrypting under the 16-byte ``key``. */
AES_TARGET static void
aes_expand(AesKeys *keys, const unsigned char *key)
{
    __m128i e[AES_ROUNDS + 1];
    int i;
    e[0] = _mm_loadu_si128((const __m128i *)key);
    /* the round constant must be an immediate: one line per round */
    e[1] = aes_next(e[0], _mm_aeskeygenassist_si128(e[0], 0x01));
    e[2] = aes_next(e[1], _mm_aeskeygenassist_si128(e[1], 0x02));
    e[3] = aes_next(e[2], _mm_aeskeygenassist_si128(e[2], 0x04));
    e[4] = aes_next(e[3], _mm_aeskeygenassist_si128(e[3], 0x08));
    e[5] = aes_next(e[4], _mm_aeskeygenassist_si128(e[4], 0x10));
    e[6] = aes_next(e[5], _mm_aeskeygenassist_si128(e[5], 0x20));
    e[7] = aes_next(e[6], _mm_aeskeygenassist_si128(e[6], 0x40));
    e[8] = aes_next(e[7], _mm_aeskeygenassist_si128(e[7], 0x80));
    e[9] = aes_next(e[8], _mm_aeskeygenassist_si128(e[8], 0x1b));
    e[10] = aes_next(e[9], _mm_aeskeygenassist_si128(e[9], 0x36));
    /* the equivalent inverse cipher: the rounds reversed, the middle ones through InvMixColumns */
    _mm_storeu_si128((__m128i *)keys->round[0], e[AES_ROUNDS]);
    for (i = 1; i < AES_ROUNDS; i++)
        _mm_storeu_si128((__m128i *)keys->round[i], _mm_aesimc_si128(e[AES_ROUNDS - i]));
    _mm_storeu_si128((__m128i *)keys->round[AES_ROUNDS], e[0]);
    aes_wipe(e, sizeof e);
}

/* CBC: ``size`` bytes (a multiple of 16) of ``in`` decrypted under ``keys`` into ``out``,
 * chained from ``iv``. ``out`` may not overlap ``in``. */
AES_TARGET static void
aes_cbc_decrypt(const AesKeys *keys, const unsigned char *iv, const unsigned char *in,
                size_t size, unsigned char *out)
{
    __m128i k[AES_ROUNDS + 1], previous = _mm_loadu_si128((const __m128i *)iv);
    size_t at;
    int r;
    for (r = 0; r <= AES_ROUNDS; r++)
        k[r] = _mm_loadu_si128((const __m128i *)keys->round[r]);
    for (at = 0; at < size; at += 16) {
        __m128i block = _mm_loadu_si128((const __m128i *)(in + at));
        __m128i x = _mm_xor_si128(block, k[0]);
        for (r = 1; r < AES_ROUNDS; r++)
            x = _mm_aesdec_si128(x, k[r]);
        x = _mm_aesdeclast_si128(x, k[AES_ROUNDS]);
        _mm_storeu_si128((__m128i *)(out + at), _mm_xor_si128(x, previous));
        previous = block;
    }
}

#else /* no AES instructions this code knows how to reach: the CipherContext stays */

static int
aes_available(void)
{
    return 0;
}

static void
aes_expand(AesKeys *keys, const unsigned char *key)
{
    (void)key;
    aes_wipe(keys, sizeof *keys);
}

static void
aes_cbc_decrypt(const AesKeys *keys, const unsigned char *iv, const unsigned char *in,
                size_t size, unsigned char *out)
{
    (void)keys, (void)iv, (void)in, (void)size, (void)out;
}

#endif
#endif
