// The platform's encryptValue (opencti-graphql catalog-domain.ts), implemented a second time with
// Node.js's crypto so that the fake platform's Python encryption is cross-checked by an
// independent implementation. Reads {"public_key": PEM, "values": [..], "version": 1|2} on stdin,
// prints a JSON array of base64 ciphertexts. Layout: version byte || RSA(aes_key || iv) ||
// AES-256-GCM(value) || tag.
import crypto from 'node:crypto';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { public_key: publicKey, values, version } = JSON.parse(Buffer.concat(chunks).toString('utf8'));

const encryptValue = (value) => {
  const aesKey = crypto.randomBytes(32);
  const iv = crypto.randomBytes(12);
  const cipher = crypto.createCipheriv('aes-256-gcm', aesKey, iv);
  const encrypted = Buffer.concat([cipher.update(value, 'utf8'), cipher.final()]);
  const tag = cipher.getAuthTag();
  const options = version === 1
    ? { key: publicKey, padding: crypto.constants.RSA_PKCS1_PADDING }
    : { key: publicKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' };
  const block = crypto.publicEncrypt(options, Buffer.concat([aesKey, iv]));
  return Buffer.concat([Buffer.from([version]), block, encrypted, tag]).toString('base64');
};

process.stdout.write(JSON.stringify(values.map(encryptValue)));
