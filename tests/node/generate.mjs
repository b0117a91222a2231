// Generates TypeScript types for cachegw from its OpenAPI schema, with openapi-typescript.
//   node generate.mjs <schema URL or file> <output .d.ts>
// Binary bodies (format: binary) are typed as Blob, as openapi-typescript's docs suggest, so a
// client can send bytes without casts.
import { writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import openapiTS, { astToString } from "openapi-typescript";
import ts from "typescript";

const [source, output] = process.argv.slice(2);
if (!source || !output) {
  console.error("usage: node generate.mjs <schema URL or file> <output .d.ts>");
  process.exit(2);
}

const BLOB = ts.factory.createTypeReferenceNode(ts.factory.createIdentifier("Blob"));
const NULL = ts.factory.createLiteralTypeNode(ts.factory.createNull());

const url = /^https?:\/\//.test(source) ? new URL(source) : pathToFileURL(source);
const ast = await openapiTS(url, {
  transform(schemaObject) {
    if (schemaObject.format === "binary") {
      return schemaObject.nullable ? ts.factory.createUnionTypeNode([BLOB, NULL]) : BLOB;
    }
    return undefined;
  },
});
writeFileSync(output, astToString(ast));
console.log(`generate.mjs: ${source} -> ${output}`);
