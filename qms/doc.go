// Package qms is the quality system as data: requirements, risks (ISO 14971), the SOUP list, releases, and the IEC 62304 and HIPAA evidence packs built from them.
package qms
