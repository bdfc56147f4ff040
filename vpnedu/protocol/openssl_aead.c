/* openssl_aead: ChaCha20-Poly1305 and AES-256-GCM from OpenSSL's EVP interface, with the
 * least glue between Python and the cipher.
 *
 * Why this file exists.  A WireGuard tunnel makes one AEAD call per packet (paper, section
 * 5.4.6): about 740,000 calls per gigabyte at each end.  The `cryptography` package's
 * ChaCha20Poly1305 costs about 1.6 us for a 1420-byte packet, of which the cipher itself is
 * under 0.6: the rest is the fixed cost of each call.  This module makes the same calls
 * OpenSSL makes for `cryptography` (EVP_EncryptInit_ex with the new nonce, EncryptUpdate,
 * EncryptFinal, the tag), from one C function per packet, on a context that holds the key
 * from the start: about 1.1 us for the same packet (BENCHMARKS.md, "a compiled AEAD call").
 *
 * It writes no cryptography of its own: the cipher is OpenSSL's (RFC 8439 for
 * ChaCha20-Poly1305, NIST SP 800-38D for GCM).  It has exactly the two calls of
 * `cryptography`'s AEAD classes that vpnedu's transport engine uses, with the same arguments
 * and the same exception, so vpnedu/protocol/suites.py can use either; the tests check the two
 * byte for byte.  When this module was not built (no C compiler, no OpenSSL headers), suites.py
 * uses `cryptography`, and everything works, a little slower.  After editing this file, build it
 * again: `pip install -e .` (or `python setup.py build_ext --inplace`).
 *
 *   Cipher(name, key)                 name: "chacha20-poly1305" or "aes-256-gcm"; key: 32 bytes
 *   .encrypt_into(nonce, data, ad, out)   ciphertext || 16-byte tag into `out`, which must be
 *                                         exactly len(data) + 16 bytes; ad may be None
 *   .decrypt(nonce, data, ad)          the plaintext as bytes, or raises
 *                                      cryptography.exceptions.InvalidTag
 *
 * The nonce is always 12 bytes (Noise's 64-bit counter with 32 zero bits, Noise spec section
 * 12).  The GIL is held throughout: each Cipher keeps one OpenSSL context per direction, and
 * two threads must not use one context at once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define NONCE_LEN 12
#define TAG_LEN 16
#define KEY_LEN 32

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc; /* keyed for sealing: only the nonce changes per message */
    EVP_CIPHER_CTX *dec; /* keyed for opening */
} CipherObject;

/* cryptography.exceptions.InvalidTag, which vpnedu's engine catches as suites.TagMismatch. */
static PyObject *InvalidTag;

static void Cipher_dealloc(CipherObject *self)
{
    /* EVP_CIPHER_CTX_free wipes the key schedule before it frees it. */
    EVP_CIPHER_CTX_free(self->enc);
    EVP_CIPHER_CTX_free(self->dec);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Cipher_init(CipherObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"name", "key", NULL};
    const char *name;
    Py_buffer key;
    const EVP_CIPHER *cipher;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sy*:Cipher", names, &name, &key))
        return -1;
    if (strcmp(name, "chacha20-poly1305") == 0)
        cipher = EVP_chacha20_poly1305();
    else if (strcmp(name, "aes-256-gcm") == 0)
        cipher = EVP_aes_256_gcm();
    else {
        PyBuffer_Release(&key);
        PyErr_Format(PyExc_ValueError, "unknown cipher '%s': use 'chacha20-poly1305' or 'aes-256-gcm'", name);
        return -1;
    }
    if (key.len != KEY_LEN) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "the key must be 32 bytes");
        return -1;
    }
    if (self->enc == NULL)
        self->enc = EVP_CIPHER_CTX_new();
    if (self->dec == NULL)
        self->dec = EVP_CIPHER_CTX_new();
    /* Both 12 bytes by default for these two ciphers: the IV length needs no EVP_CTRL call. */
    int ok = self->enc && self->dec
        && EVP_EncryptInit_ex(self->enc, cipher, NULL, key.buf, NULL) == 1
        && EVP_DecryptInit_ex(self->dec, cipher, NULL, key.buf, NULL) == 1;
    PyBuffer_Release(&key);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up the cipher");
        return -1;
    }
    return 0;
}

/* Take the buffers of the arguments; on failure release what was taken and return -1.  A Cipher
 * made with Cipher.__new__ alone has no context yet: refuse it here, before any EVP call. */
static int get_buffers(CipherObject *self, PyObject *const *args, Py_buffer *nonce, Py_buffer *data,
                       Py_buffer *ad, int *has_ad)
{
    if (self->enc == NULL || self->dec == NULL) {
        PyErr_SetString(PyExc_ValueError, "this Cipher has no key: make it with Cipher(name, key)");
        return -1;
    }
    if (PyObject_GetBuffer(args[0], nonce, PyBUF_SIMPLE) < 0)
        return -1;
    if (PyObject_GetBuffer(args[1], data, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(nonce);
        return -1;
    }
    *has_ad = args[2] != Py_None;
    if (*has_ad && PyObject_GetBuffer(args[2], ad, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(nonce);
        PyBuffer_Release(data);
        return -1;
    }
    if (nonce->len != NONCE_LEN) {
        PyErr_SetString(PyExc_ValueError, "the nonce must be 12 bytes");
    } else if (data->len > INT_MAX - TAG_LEN || (*has_ad && ad->len > INT_MAX)) {
        PyErr_SetString(PyExc_OverflowError, "data or associated data longer than 2 GiB");
    } else {
        return 0;
    }
    PyBuffer_Release(nonce);
    PyBuffer_Release(data);
    if (*has_ad)
        PyBuffer_Release(ad);
    return -1;
}

static PyObject *Cipher_encrypt_into(CipherObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer nonce, data, ad, out;
    int has_ad, len, ok;
    unsigned char *o;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "encrypt_into(nonce, data, associated_data, buf) takes 4 arguments");
        return NULL;
    }
    if (get_buffers(self, args, &nonce, &data, &ad, &has_ad) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[3], &out, PyBUF_WRITABLE) < 0) {
        ok = -1;
        goto release;
    }
    if (out.len != data.len + TAG_LEN) {
        PyErr_SetString(PyExc_ValueError, "buf must be exactly len(data) + 16 bytes");
        ok = -1;
        goto release_out;
    }
    o = out.buf;
    /* A keyed context takes a new nonce alone (key NULL): the key schedule is kept. */
    ok = EVP_EncryptInit_ex(self->enc, NULL, NULL, NULL, nonce.buf) == 1
        && (!has_ad || ad.len == 0 || EVP_EncryptUpdate(self->enc, NULL, &len, ad.buf, (int)ad.len) == 1)
        && EVP_EncryptUpdate(self->enc, o, &len, data.buf, (int)data.len) == 1
        && EVP_EncryptFinal_ex(self->enc, o + len, &len) == 1
        && EVP_CIPHER_CTX_ctrl(self->enc, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, o + data.len) == 1;
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to encrypt");
        ok = -1;
    }
release_out:
    PyBuffer_Release(&out);
release:
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&data);
    if (has_ad)
        PyBuffer_Release(&ad);
    if (ok < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Cipher_decrypt(CipherObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer nonce, data, ad;
    int has_ad, len, ok;
    PyObject *plain = NULL;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decrypt(nonce, data, associated_data) takes 3 arguments");
        return NULL;
    }
    if (get_buffers(self, args, &nonce, &data, &ad, &has_ad) < 0)
        return NULL;
    if (data.len < TAG_LEN) {
        /* Too short to hold a tag: it cannot authenticate (cryptography says the same). */
        PyErr_SetNone(InvalidTag);
        goto release;
    }
    Py_ssize_t n = data.len - TAG_LEN;
    const unsigned char *in = data.buf;
    plain = PyBytes_FromStringAndSize(NULL, n);
    if (plain == NULL)
        goto release;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(plain);
    ok = EVP_DecryptInit_ex(self->dec, NULL, NULL, NULL, nonce.buf) == 1
        && (!has_ad || ad.len == 0 || EVP_DecryptUpdate(self->dec, NULL, &len, ad.buf, (int)ad.len) == 1)
        && EVP_DecryptUpdate(self->dec, o, &len, in, (int)n) == 1
        && EVP_CIPHER_CTX_ctrl(self->dec, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, (void *)(in + n)) == 1;
    if (!ok) {
        Py_CLEAR(plain);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to decrypt");
        goto release;
    }
    /* Final compares the tag (in constant time); on a mismatch nothing may be returned. */
    if (EVP_DecryptFinal_ex(self->dec, o + len, &len) != 1) {
        Py_CLEAR(plain);
        PyErr_SetNone(InvalidTag);
    }
release:
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&data);
    if (has_ad)
        PyBuffer_Release(&ad);
    return plain;
}

static PyMethodDef Cipher_methods[] = {
    {"encrypt_into", (PyCFunction)(void (*)(void))Cipher_encrypt_into, METH_FASTCALL,
     "encrypt_into(nonce, data, associated_data, buf): write ciphertext and tag into buf "
     "(exactly len(data) + 16 bytes)."},
    {"decrypt", (PyCFunction)(void (*)(void))Cipher_decrypt, METH_FASTCALL,
     "decrypt(nonce, data, associated_data) -> plaintext; raises InvalidTag when data does not "
     "authenticate."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CipherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vpnedu.protocol.openssl_aead.Cipher",
    .tp_doc = "Cipher(name, key): an OpenSSL AEAD context keyed once, for many messages.",
    .tp_basicsize = sizeof(CipherObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Cipher_init,
    .tp_dealloc = (destructor)Cipher_dealloc,
    .tp_methods = Cipher_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "vpnedu.protocol.openssl_aead",
    .m_doc = "ChaCha20-Poly1305 and AES-256-GCM from OpenSSL's EVP interface, one C call per message "
             "(see the comment at the top of openssl_aead.c).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit_openssl_aead(void)
{
    PyObject *exceptions, *m;

    if (PyType_Ready(&CipherType) < 0)
        return NULL;
    exceptions = PyImport_ImportModule("cryptography.exceptions");
    if (exceptions == NULL)
        return NULL;
    InvalidTag = PyObject_GetAttrString(exceptions, "InvalidTag");
    Py_DECREF(exceptions);
    if (InvalidTag == NULL)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CipherType);
    if (PyModule_AddObject(m, "Cipher", (PyObject *)&CipherType) < 0) {
        Py_DECREF(&CipherType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddStringConstant(m, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
